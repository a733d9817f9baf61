"""One request on a client connection, from its head to the end of its answer.

An ``Exchange`` carries what the sidecar reads from the request once (method, path, query,
framing, keep-alive), what it decides (the route, the credential, what the answer may carry)
and the ways it ends: forwarded by a ``Relay``, or answered by the sidecar itself
(``reply``: a preflight, a redirect, an API answer; ``fail``: an error, which closes the
connection). When it ends, its route's request counter gets its outcome, once.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from ..http1 import Answer, Head, HTTPError, render_head, request_body_framing
from .access import wants_html
from .metrics import outcome_of
from .pages import error_page

SECURE_SCHEMES = ("https", "wss")  # CHP terminating TLS says wss for websockets


class Exchange:
    __slots__ = (
        "_client",
        "_counter",
        "body",
        "connection",
        "cors",
        "credential",
        "ended",
        "head",
        "keep_alive",
        "login_token",
        "method",
        "outcome",
        "own",
        "path",
        "peer",
        "query",
        "relay",
        "rest",
        "route",
        "target",
        "token",
        "unread_body",
        "version",
        "websocket",
    )

    def __init__(self, client, head: Head, peer: str = ""):
        self._client = client  # the ClientConnection (None in a unit test)
        self.head = head
        self.method, self.target, self.version = head.start
        self.path, _, self.query = self.target.partition("?")
        self.peer = peer
        self.connection = head.tokens("Connection")
        self.keep_alive = "keep-alive" in self.connection if self.version == "HTTP/1.0" else "close" not in self.connection
        self.body = request_body_framing(head)
        self.unread_body = self.body.kind != "none"
        self.own = None  # forward.ResponseRules: what the app's answer loses and gets
        self.relay = None  # forwarded: the Relay moving its bytes
        self.websocket = "upgrade" in self.connection and "websocket" in head.tokens("Upgrade")
        self.route = None
        self.rest = ""  # the path below the route's prefix
        self.cors: list = []  # the port's CORS headers for this request's origin
        self.token: str | None = None  # from the query
        self.credential = ""  # what let it in: "" (public), token, token cookie, login
        self.login_token = ""  # let in by a login: its session's hub token
        self.outcome = "forwarded"
        self._counter = None  # the metrics to count the outcome in, once the route is known
        self.ended = False

    # ---- what the request says -----------------------------------------------------------
    def header(self, name: str, default: str | None = None) -> str | None:
        return self.head.get(name, default)

    @property
    def secure(self) -> bool:
        # the client's scheme comes first: CHP appends its own ("https,http" behind TLS)
        return self.head.get("X-Forwarded-Proto", "").split(",")[0].strip().lower() in SECURE_SCHEMES

    @property
    def origin(self) -> str:
        """scheme://host[:port] as the browser addressed this request."""
        return f"{'https' if self.secure else 'http'}://{self.head.get('Host', '')}"

    @property
    def wants_html(self) -> bool:
        return wants_html(self.head)

    @property
    def client(self):
        return self._client

    def count_in(self, metrics) -> None:
        """Count this request's outcome in ``metrics`` when it ends (its route is known)."""
        self._counter = metrics

    # ---- how it ends -----------------------------------------------------------------------
    def end(self, keep_alive: bool) -> None:
        """The answer is complete: count it, and read the next request or close."""
        if self.ended:
            return
        self.ended = True
        self.relay = None  # no cycle left for the garbage collector to find
        if self._counter is not None:
            self._counter.request(self.route.entry, self.outcome)
        self._client.exchange_ended(self, keep_alive and self.keep_alive)

    async def read_body(self) -> bytes:
        """The whole request body (a small one: the hub's API calls)."""
        body = await self._client.read_body(self.body.length) if self.body.length else b""
        self.unread_body = False
        return body

    def reply(self, status: int, headers: list, body: bytes = b"", head_only: bool = False) -> None:
        """A whole answer of the sidecar's own (``head_only``: without its body, for HEAD);
        the connection stays open unless a request body is left unread (never parsed)."""
        keep_alive = self.keep_alive and not self.unread_body and not self.websocket
        headers = list(headers)
        if status != 204:
            headers.append(("Content-Length", str(len(body))))
        if not keep_alive:
            headers.append(("Connection", "close"))
        self._client.write(render_head(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", headers) + (b"" if head_only else body))
        self.end(keep_alive)

    def reply_json(self, status: int, data, head_only: bool = False) -> None:
        body = b"" if data is None else json.dumps(data).encode()
        self.reply(status, [("Content-Type", "application/json")], body, head_only)

    def answer(self, answer: Answer, hub_page: str) -> None:
        """A redirect (or any ``Answer``), with its message as a page or JSON."""
        self.outcome = outcome_of(answer.status)
        kind, body = message_body(answer.status, answer.message, hub_page if self.wants_html else None)
        self.reply(answer.status, [("Content-Type", kind), *answer.headers], body)

    def fail(self, error: HTTPError, hub_page: str) -> None:
        """Answer with an error (a page for a browser, else JSON) and close the connection."""
        if self.ended:
            return
        self.outcome = outcome_of(error.status)
        self._client.write(error_response(error, hub_page if self.wants_html else None))
        self.end(False)

    def abort(self) -> None:
        """The client went away, or the answer cannot be completed: close without a word."""
        if not self.ended:
            self.outcome = "aborted"
            self.end(False)


def message_body(status: int, message: str, hub_page: str | None) -> tuple[str, bytes]:
    """(content type, body) of a message of the sidecar's: the HTML page with a link to
    ``hub_page`` if given, else JSON with the status and the message."""
    if hub_page is not None:
        return "text/html; charset=utf-8", error_page(status, message, hub_page).encode()
    return "application/json", json.dumps({"status": status, "message": message}).encode()


def error_response(error: HTTPError, hub_page: str | None = None) -> bytes:
    """A whole answer that ends the connection."""
    kind, body = message_body(error.status, error.message, hub_page)
    headers = [("Content-Type", kind), ("Content-Length", str(len(body))), *error.headers, ("Connection", "close")]
    return render_head(f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}", headers) + body
