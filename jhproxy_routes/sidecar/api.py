"""The hub's API to the sidecar, under ``/_jhproxy-routes/``: the route table (CHP-like
``routes/<path>``, and ``bulk`` for many changes in one request), server activity, health
and readiness, and the Prometheus metrics (also below the sidecar's service prefix).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from urllib.parse import unquote

from ..contract import ACTIVITY_API, API_PREFIX, BULK_API, HEALTH_PATH, METRICS_PATH, READY_PATH, ROUTES_API
from ..http1 import HTTPError
from .access import split_query
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

MAX_API_BODY = 1024 * 1024


class HubAPI:
    def __init__(self, sidecar, authenticate_metrics: bool = True):
        self.sidecar = sidecar
        self.authenticate_metrics = authenticate_metrics
        # until when the table is known to be the hub's whole table (the end of a
        # reconciliation, valid for a few of its intervals): ready answers 503 before (a new
        # replica) and after (a replica the hub no longer reaches)
        self.complete_until = 0.0

    def serves(self, path: str) -> bool:
        prefix = self.sidecar.service_prefix
        return path.startswith(API_PREFIX) or bool(prefix and path.startswith(prefix))

    @property
    def metrics_paths(self) -> tuple[str, ...]:
        prefix = self.sidecar.service_prefix
        return (METRICS_PATH, prefix.rstrip("/") + "/metrics") if prefix else (METRICS_PATH,)

    async def answer(self, ex) -> None:
        """Answer a call of the hub's (or of a probe: health, readiness, metrics). Only a call
        with the hub's token has its body read; any other body is left unread, and the
        connection closed after the answer."""
        sidecar, path, method = self.sidecar, ex.path, ex.method
        table = sidecar.table
        head_only = method == "HEAD"  # the same answer without its body (a probe may ask so)
        if path in self.metrics_paths:
            await self._check_metrics_credential(ex)
            gzipped = "gzip" in ex.head.tokens("Accept-Encoding")
            text = await asyncio.to_thread(sidecar.metrics.exposition, gzipped)
            headers = [("Content-Type", METRICS_CONTENT_TYPE)] + ([("Content-Encoding", "gzip")] if gzipped else [])
            ex.reply(200, headers, text, head_only)
            return
        if path == READY_PATH:
            ready = asyncio.get_running_loop().time() < self.complete_until
            ex.reply_json(200 if ready else 503, {"ready": ready, "routes": len(table.routes)}, head_only)
            return
        if path == HEALTH_PATH or not path.startswith(API_PREFIX):
            ex.reply_json(200, {"status": "ok", "routes": len(table.routes)}, head_only)
            return
        auth = ex.header("Authorization", "").encode("latin-1")
        if not hmac.compare_digest(auth, f"token {sidecar.api_token}".encode("latin-1")):
            raise HTTPError(403, "The sidecar's route API needs the hub's token.")
        if ex.body.kind == "chunked" or ex.body.length > MAX_API_BODY:
            raise HTTPError(413, "Send the route as JSON with a Content-Length of at most 1 MiB.")
        body = await ex.read_body()
        if path == BULK_API:
            ex.reply_json(200, self.bulk(method, body))
        elif path == ACTIVITY_API:
            ex.reply_json(200, sidecar.activity.answer(activity_since(ex.target)))
        elif not path.startswith(ROUTES_API):
            raise HTTPError(404, "Unknown sidecar API path.")
        else:
            ex.reply_json(*self.route_call(method, route_key(path[len(ROUTES_API) :]), body))

    def route_call(self, method: str, key: str, body: bytes) -> tuple[int, dict | None]:
        table = self.sidecar.table
        if method == "GET":
            return 200, table.as_dict()
        if method == "POST":
            try:
                table.set(key, json.loads(body))
            except (ValueError, TypeError, AttributeError) as e:
                raise HTTPError(400, f"Bad route data for {key}: {e}") from None
            return 201, {"created": key}
        if method == "DELETE":
            if not table.delete(key):
                raise HTTPError(404, f"No route {key}.")
            self.sidecar.metrics.forget(key)
            return 204, None
        raise HTTPError(405, "Use GET, POST or DELETE.")

    def bulk(self, method: str, body: bytes) -> dict:
        """``POST {"add": {path: data, ...}, "delete": [path, ...]}``: many changes in one
        request (a hub starting with thousands of servers). Adds are checked first: a bad
        one refuses the whole request and changes nothing. ``{"complete": true, "valid_for":
        seconds or null}``: the table is now the hub's whole table (the end of a
        reconciliation), for that long."""
        if method != "POST":
            raise HTTPError(405, "Use POST.")
        table, metrics = self.sidecar.table, self.sidecar.metrics
        try:
            changes = json.loads(body)
            valid_for = changes.get("valid_for")
            if not (
                valid_for is None or (isinstance(valid_for, (int, float)) and not isinstance(valid_for, bool) and valid_for > 0)
            ):
                raise ValueError("valid_for must be null or a positive number of seconds")
            add = {route_key(k): v for k, v in changes.get("add", {}).items()}
            delete = [route_key(k) for k in changes.get("delete", [])]
            table.set_many(add)
        except (ValueError, TypeError, AttributeError) as e:
            raise HTTPError(400, f"Bad bulk route data: {e}") from None
        deleted = 0
        for key in delete:
            if table.delete(key):
                metrics.forget(key)
                deleted += 1
        if changes.get("complete") is True:
            self.complete_until = asyncio.get_running_loop().time() + valid_for if valid_for else float("inf")
        return {"added": len(add), "deleted": deleted}

    async def _check_metrics_credential(self, ex) -> None:
        """As the hub's ``/hub/metrics``: a token with ``read:metrics`` (or the hub's own)."""
        if not self.authenticate_metrics:
            return
        scheme, _, token = ex.header("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() in ("token", "bearer") and token:
            if hmac.compare_digest(token.encode("latin-1"), self.sidecar.api_token.encode("latin-1")):
                return
            if await self.sidecar.login.token_has_scope(token, "read:metrics"):
                return
        raise HTTPError(403, "The sidecar's metrics need a JupyterHub token with the scope read:metrics.")


def activity_since(target: str) -> float:
    """``since`` of an activity request (400 unless a number of seconds)."""
    since, _ = split_query(target.partition("?")[2], "since")
    try:
        value = float(since or 0)
    except ValueError:
        raise HTTPError(400, "since must be a number of seconds (the now of the last answer).") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise HTTPError(400, "since must be a finite number of seconds.")
    return value


def route_key(path: str) -> str:
    """A table key (unescaped, no trailing slash) from the escaped path of a route API call."""
    try:
        return "/" + "/".join(unquote(s, errors="strict") for s in str(path).split("/") if s)
    except UnicodeDecodeError:
        raise HTTPError(400, "The route path is not valid UTF-8.") from None
