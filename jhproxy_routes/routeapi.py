"""A client for a route table with configurable-http-proxy's REST API.

Two tables speak it: CHP itself (``/api/routes``) and the sidecar's mirror of it
(``/_jhproxy-routes/api/routes``). Route keys are routespecs: escaped paths with a leading
and a trailing ``/``, or with host routing (JupyterHub's ``subdomain_host``) ``host/path/``. Only routes whose data carry ``ROUTE_TAG`` are ours; JupyterHub's own
routes (tagged ``jupyterhub``) and anybody else's are never read back or touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from urllib.parse import quote

import httpx
from jupyterhub.utils import exponential_backoff

from .contract import ACTIVITY_API, API_PREFIX, BULK_API
from .transport import KeepAliveTransport

ROUTE_TAG = "jhproxy_routes"
ENTRIES_PER_YIELD = 1000  # entries of a big route table handled between two yields to the event loop
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


class RouteAPIError(Exception):
    """A route API request failed for good (after retries, or with a 4xx)."""


def json_object_items(text: str):
    """The (key, value) pairs of a JSON object, parsed one at a time: a table of 20,000 routes
    is read in small steps instead of one long call that would hold up the hub's loop."""

    def skip_space(i: int) -> int:
        return _SPACE.match(text, i).end()

    def expect(i: int, char: str) -> int:
        if text[i : i + 1] != char:
            raise ValueError(f"expected {char!r} at {i} in the route table")
        return skip_space(i + 1)

    i = expect(skip_space(0), "{")
    if text[i : i + 1] == "}":
        i = skip_space(i + 1)
    else:
        while True:
            key, i = _DECODER.raw_decode(text, i)
            if not isinstance(key, str):
                raise ValueError(f"a key that is not a string in the route table: {key!r}")
            value, i = _DECODER.raw_decode(text, expect(skip_space(i), ":"))
            yield key, value
            i = skip_space(i)
            if text[i : i + 1] == "}":
                i = skip_space(i + 1)
                break
            i = expect(i, ",")
    if i != len(text):
        raise ValueError(f"unexpected data after the route table at {i}")


def routespec_to_api_path(routespec: str) -> str:
    # CHP keeps no trailing slash in its keys (and its DELETE dislikes one); a host
    # routespec (``host/path/``) is ``/host/path`` there
    return "/" + routespec.strip("/")


def routespec_from_api_key(key: str, host_routing: bool = False) -> str:
    # CHP returns keys unescaped: escape them back as JupyterHub does (host routespecs
    # without the leading ``/``)
    spec = quote(key, safe="@/~")
    if host_routing:
        spec = spec.lstrip("/")
    return spec if spec.endswith("/") else spec + "/"


class RouteAPI:
    """Read, add and delete our routes in one route table, with bounded retries."""

    def __init__(
        self,
        name: str,
        api_url: str,
        auth_token: str,
        timeout: float = 10,
        retry_timeout: float = 30,
        concurrency: int = 10,
        log: logging.Logger | None = None,
        host_routing: bool = False,
    ):
        self.name = name
        self.host_routing = host_routing  # keys begin with a host (CHP's --host-routing)
        self.retarget(api_url, auth_token)
        self.retry_timeout = retry_timeout
        self.concurrency = concurrency
        self.log = log or logging.getLogger(__name__)
        self.semaphore = asyncio.Semaphore(concurrency)
        self.timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        # requests go to the transport directly: an httpx.AsyncClient's cookie jar, redirect
        # and URL handling would cost more CPU than the request itself, for nothing here
        self.transport = KeepAliveTransport()

    def retarget(self, api_url: str, auth_token: str) -> None:
        """Use the table at ``api_url`` with ``auth_token`` from the next attempt on, also
        for requests being retried (the hub's proxy moved: ``PATCH /hub/api/proxy``)."""
        self.api_url = api_url.rstrip("/") + "/api/"
        self.routes_url = self.api_url + "routes"
        self.headers = {"Authorization": f"token {auth_token}", "Accept": "application/json"}

    async def get_all(self) -> dict[str, dict]:
        """Our routes: ``{routespec: data}`` (data includes ``target``)."""
        response = await self._request("GET", "")
        ours = {}
        try:
            for count, (key, data) in enumerate(json_object_items(response.content.decode()), 1):
                if isinstance(data, dict) and data.get(ROUTE_TAG):
                    ours[routespec_from_api_key(key, self.host_routing)] = data
                if count % ENTRIES_PER_YIELD == 0:
                    await asyncio.sleep(0)
        except ValueError as e:  # also invalid UTF-8
            raise RouteAPIError(f"GET {self.name} routes: not a JSON object of routes ({e})") from None
        return ours

    async def add(self, routespec: str, data: dict) -> None:
        await self._request("POST", routespec_to_api_path(routespec), {**data, ROUTE_TAG: True})

    async def delete(self, routespec: str) -> None:
        await self._request("DELETE", routespec_to_api_path(routespec), ok_statuses=(404,))

    async def add_many(self, routes: dict[str, dict]) -> None:
        """Add (or replace) many routes, ``concurrency`` requests at a time."""
        await self._each(list(routes.items()), lambda item: self.add(*item))

    async def delete_many(self, routespecs: list[str]) -> None:
        await self._each(routespecs, self.delete)

    async def _each(self, items: list, call) -> None:
        """``await call(item)`` for every item by a few workers: one task per route would,
        for 20,000 routes, block the loop just creating them."""

        async def worker(queue):
            for item in queue:
                await call(item)

        queue = iter(items)
        await asyncio.gather(*(worker(queue) for _ in range(min(self.concurrency, len(items)))))

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def _request(self, method, path, body=None, ok_statuses=(), url=None) -> httpx.Response:
        what = f"{method} {self.name} route {path or '(all)'}"
        last_error = "no attempt"

        async def attempt():
            nonlocal last_error
            try:
                target = url or self.routes_url + quote(path, safe="@/~%")  # read per attempt: see retarget
                request = httpx.Request(method, target, json=body, headers=self.headers, extensions={"timeout": self.timeouts})
                async with self.semaphore:
                    response = await self.transport.handle_async_request(request)
            except httpx.HTTPError as e:
                last_error = f"{type(e).__name__}: {e or 'no answer'}"
                self.log.warning("%s failed (%s), retrying", what, last_error)
                return None
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}"
                self.log.warning("%s failed (%s), retrying", what, last_error)
                return None
            return response

        try:
            response = await exponential_backoff(attempt, what, timeout=self.retry_timeout, start_wait=0.1, max_wait=2)
        except asyncio.TimeoutError:
            raise RouteAPIError(f"{what}: gave up after {self.retry_timeout:g}s ({last_error})") from None
        stranger = self.stranger(response)
        if stranger:
            raise RouteAPIError(
                f"{what}: the process at {self.address} is not this hub's jhproxy-routes"
                f" sidecar ({stranger}); is another program, or another hub's sidecar, listening there?"
            )
        if response.status_code >= 400 and response.status_code not in ok_statuses:
            raise RouteAPIError(f"{what}: HTTP {response.status_code} {response.text[:200]}")
        return response

    @property
    def address(self) -> str:
        return self.api_url.removesuffix("/api/")

    @staticmethod
    def stranger(response: httpx.Response) -> str:
        """Why the answer is not from the table this API expects ("" if it may be)."""
        return ""


class SidecarRouteAPI(RouteAPI):
    """The sidecar's table: as CHP's, plus a bulk request for many changes at once."""

    BATCH = 500  # routes per bulk request: well under the sidecar's 1 MiB API body limit

    @property
    def address(self) -> str:
        return self.api_url.removesuffix(API_PREFIX + "api/")

    @staticmethod
    def stranger(response: httpx.Response) -> str:
        # the sidecar answers its API in JSON, and takes the hub's token
        if response.status_code == 403:
            return "it refuses the hub's token"
        if not response.headers.get("content-type", "").startswith("application/json"):
            return f"it answered HTTP {response.status_code} without JSON"
        return ""

    async def add_many(self, routes: dict[str, dict]) -> None:
        items = list(routes.items())
        for i in range(0, len(items), self.BATCH):
            add = {routespec_to_api_path(spec): {**data, ROUTE_TAG: True} for spec, data in items[i : i + self.BATCH]}
            await self._request("POST", "(bulk add)", {"add": add}, url=self.address + BULK_API)

    async def delete_many(self, routespecs: list[str]) -> None:
        for i in range(0, len(routespecs), self.BATCH):
            delete = [routespec_to_api_path(spec) for spec in routespecs[i : i + self.BATCH]]
            await self._request("POST", "(bulk delete)", {"delete": delete}, url=self.address + BULK_API)

    async def activity(self, since: float) -> dict:
        """The servers' activity the sidecar saw at or after ``since`` (the ``now`` of its
        last answer, which this acknowledges): ``{"now": t, "servers": [[user, server, t]]}``."""
        response = await self._request("GET", "(activity)", url=f"{self.address}{ACTIVITY_API}?since={since!r}")
        try:
            answer = response.json()
            now = answer.get("now")
            if not isinstance(now, (int, float)) or not math.isfinite(now) or not isinstance(answer.get("servers"), list):
                raise ValueError("now (a finite time) or servers missing")
        except (ValueError, AttributeError) as e:
            raise RouteAPIError(f"GET {self.name} activity: not an activity answer ({e})") from None
        return answer

    async def mark_complete(self, valid_for: float | None) -> None:
        """Tell the sidecar its table is the hub's whole table: it reports ready for
        ``valid_for`` seconds (None: until it stops), unless told so again."""
        await self._request("POST", "(complete)", {"complete": True, "valid_for": valid_for}, url=self.address + BULK_API)
