"""The auth sidecar: checks every request to a protected port and streams it to the app.

Per request: find the route (longest prefix), answer a CORS preflight, check the access
(public, disabled, or restricted: the port token from ``X-Proxy-Token`` or the ``proxy_token``
query parameter, which a browser's top-level page trades for a cookie of the port, see
``token_cookie.py``; or a hub login, see ``login.py``; both cookies used only by requests from
the port's own origin or by top-level pages: no CSRF or framing from a sibling port), strip
credentials (hub and sidecar cookies, the token, also from ``Referer``), forward to the app
over a pooled keep-alive connection, and stream both bodies without buffering them. Every answer of the app,
a websocket's 101 included, passes one filter (``response_headers`` in ``forward.py``): no hub or sidecar cookie,
the port's CORS policy instead of the app's. Websocket upgrades become a byte pipe once the app
answers 101. The check is made for every request, never per connection: CHP reuses its
connections to the sidecar across clients.

Message framing is never taken from the other side as is: the sidecar drops the incoming
``Content-Length`` and ``Transfer-Encoding`` and writes its own from what it parsed, so
client, sidecar and app always agree where a message ends (no smuggling through the pool).

The hub keeps the table up to date through a CHP-like API under ``/_jhproxy-routes/api/routes``,
and ``/_jhproxy-routes/api/bulk`` for many changes in one request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from http import HTTPStatus

from ..audit import AuditLog, DenialLog
from ..contract import ACTIVITY_API, API_PREFIX, BULK_API, HEALTH_PATH, METRICS_PATH, READY_PATH, ROUTES_API
from ..http1 import (
    HOP_BY_HOP,
    MAX_HEAD,
    HTTPError,
    copy_chunked,
    copy_length,
    copy_until_close,
    parse_request_head,
    parse_response_head,
    render_head,
    request_body_framing,
    response_body_framing,
)
from .access import (
    TOKEN_HEADER,
    client_address,
    filter_cookies,
    split_query,
    strip_token_from_referer,
    token_expired,
    token_verdict,
    wants_html,
)
from .activity import ServerActivity
from .api import activity_since, route_key
from .forward import ResponseRules, _UpstreamClosed, pipe_both, response_headers
from .login import TICKET_QUERY, HubLogin, route_prefix
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import SidecarMetrics
from .pages import error_page
from .ratelimit import BadTokenLimiter
from .table import RouteTable
from .token_cookie import TokenCookies, is_navigation
from .upstream import UpstreamPool

log = logging.getLogger("jhproxy_routes.sidecar")

FRAMING = {"content-length", "transfer-encoding"}
CORS_RESPONSE_HEADERS = {
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "access-control-expose-headers",
}
# never forwarded to an app: hop-by-hop headers, framing (rewritten), the token, and
# what the sidecar sets itself
UPSTREAM_DROP = frozenset(HOP_BY_HOP | FRAMING | {TOKEN_HEADER, "expect", "x-forwarded-prefix"})
# the sidecar's X-Forwarded-* always reach the app, whatever the client's Connection names
FORWARDED = frozenset({"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix"})
RESPONSE_DROP = frozenset(HOP_BY_HOP | FRAMING)
# on a port with a CORS policy of the sidecar's, the app's own CORS headers never pass
RESPONSE_DROP_CORS = RESPONSE_DROP | CORS_RESPONSE_HEADERS
# the answer to a request with the token in its query: its Referer never carries the token on
NO_REFERRER = [("Referrer-Policy", "no-referrer")]
FRAME_SELF = [("Content-Security-Policy", "frame-ancestors 'self'")]  # added to the app's own policy, never replacing it
VARY_COOKIE = [("Vary", "Cookie")]
LIMITED_PAUSE = 1.0  # seconds before a 429 answers a wrong token
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # retried once on a fresh connection
SECURE_SCHEMES = ("https", "wss")  # CHP terminating TLS says wss for websockets
MAX_API_BODY = 1024 * 1024
SMALL_BODY = 64 * 1024


class Sidecar:
    def __init__(
        self,
        api_token: str,
        upstream_timeout: float = 300,
        connect_timeout: float = 10,
        client_timeout: float = 60,
        client_idle_timeout: float = 300,
        max_idle_connections: int = 10_000,
        service_prefix: str = "",
        login: HubLogin | None = None,
        hub_page: str = "/hub/proxytoken/",
        audit: AuditLog | None = None,
        limiter: BadTokenLimiter | None = None,
        authenticate_metrics: bool = True,
        metrics_by_route: bool = True,
        trusted_proxies: tuple = (),
        token_cookies: bool = True,
    ):
        self.api_token = api_token
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout
        self.client_idle_timeout = client_idle_timeout
        self.max_idle_connections = max_idle_connections
        # connections waiting for a request head, longest waiting first (insertion order):
        # writer -> its HeadDeadline
        self.idle_clients: dict = {}
        # JupyterHub checks a managed service at its prefix: answer there as at /health
        self.service_prefix = service_prefix or os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "")
        self.login = login or HubLogin(api_token)
        # a port token opened in a browser traded for a cookie of the port (None: never)
        self.token_cookies = TokenCookies(api_token) if token_cookies else None
        self.hub_page = hub_page  # where a user manages their ports: linked from error pages
        self.table = RouteTable(on_change=self._close_websockets)
        self.pool = UpstreamPool(connect_timeout=connect_timeout)
        self.denials = DenialLog(audit or AuditLog(None))
        self.limiter = limiter or BadTokenLimiter()
        self.activity = ServerActivity()
        self.websockets: dict[str, set] = {}  # table entry -> client writers of its open websockets
        self.metrics = SidecarMetrics(
            lambda: len(self.table.routes), metrics_by_route, self.table.has, self.activity.pending_seconds
        )
        # until when the table is known to be the hub's whole table (the end of a
        # reconciliation, valid for a few of its intervals): /_jhproxy-routes/ready answers
        # 503 before (a new replica) and after (a replica the hub no longer reaches)
        self.complete_until = 0.0
        self.authenticate_metrics = authenticate_metrics
        self.trusted_proxies = trusted_proxies  # ip_network objects: front proxies whose X-Forwarded-For is believed

    # ---- connections ---------------------------------------------------------------
    async def serve_connection(self, reader, writer) -> None:
        peer = (writer.get_extra_info("peername") or ("",))[0]
        if len(self.idle_clients) >= self.max_idle_connections:
            self._close_longest_idle()
        first = True
        try:
            while True:
                # slowloris: a head once begun must be complete within client_timeout; and
                # no connection waits for one longer than client_idle_timeout
                deadline = self.idle_clients[writer] = HeadDeadline(
                    self.client_timeout, reader, writer, self.client_idle_timeout, first
                )
                first = False
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                except asyncio.LimitOverrunError:
                    head = None
                finally:
                    deadline.cancel()
                    del self.idle_clients[writer]
                if head is None:
                    await self.send_error(writer, HTTPError(431, "Request head too large."))
                    break
                request = None
                try:
                    request = parse_request_head(head)
                    keep_alive = await self.handle(request, reader, writer, peer)
                except HTTPError as e:
                    html = request is not None and wants_html(request)
                    await self.send_error(writer, e, getattr(e, "headers", ()), html)
                    break
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # shutting down: the connection just closes (and asyncio logs no traceback)
        except Exception:
            log.exception("unexpected error on a connection from %s", peer)
        finally:
            writer.close()

    def _close_longest_idle(self) -> None:
        """Make room for a new connection: close the one that has waited longest for a
        request (none begun on it), one that never sent any first (CHP's always have)."""
        for never_used in (True, False):
            for writer, deadline in self.idle_clients.items():
                if (deadline.first or not never_used) and not deadline.pending() and not writer.is_closing():
                    writer.close()  # its serve_connection ends and forgets it
                    return

    async def send_error(self, writer, error: HTTPError, extra=(), html: bool = False) -> None:
        """Answer with an error (a page for a browser, else JSON) and close: any unread body
        is left unread, never parsed."""
        page = error_page(error.status, error.message, self.hub_page) if html else None
        writer.write(error_response(error, extra, page))
        try:
            await writer.drain()
        except ConnectionError:
            pass

    # ---- one request ---------------------------------------------------------------
    async def handle(self, request, reader, writer, peer: str) -> bool:
        method, target, version = request.start
        path, _, query = target.partition("?")
        connection = request.tokens("Connection")
        keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        body_framing = request_body_framing(request)
        # a port with a host of its own: everything on that host is the port's
        found = self.table.lookup(path, request.get("Host", "").split(":")[0]) if self.table.by_host else None
        if found is None:
            if path == self.login.callback_path:
                headers = await self.login.finish(query, self._origin(request), self.table)
                raise HTTPErrorWithHeaders(302, "Logged in; back to the port.", headers)
            if path == self.service_prefix and wants_html(request):  # the hub's Services menu links here
                raise HTTPErrorWithHeaders(302, "Your ports are managed on the hub.", [("Location", self.hub_page)])
            if path.startswith(API_PREFIX) or (self.service_prefix and path.startswith(self.service_prefix)):
                return await self.handle_api(request, reader, writer, path, body_framing, keep_alive)
            found = self.table.lookup(path)
        if found is None:
            # CHP sent it here, so the hub is about to tell us about it (or just removed it)
            raise HTTPError(503, "This port route is not (or no longer) known to the sidecar; try again shortly.")
        route, rest = found
        with self.metrics.outcome(route.entry) as outcome:
            origin = request.get("Origin")
            cors = self._cors_headers(route, origin)
            if method == "OPTIONS" and origin is not None and request.get("Access-Control-Request-Method"):
                outcome.value = "preflight"
                # a preflight has no body; if one came anyway, close rather than read it
                return await self.answer_preflight(request, writer, cors, keep_alive and body_framing[0] == "none")
            ticket, query = split_query(query, TICKET_QUERY)
            if ticket is not None and self.login.available:  # back from logging in at the hub
                cookie_path = route_prefix(path, route.path_depth)
                headers = self.login.land(ticket, request.get("Cookie", ""), route, cookie_path, self._secure(request))
                raise HTTPErrorWithHeaders(302, "Logged in.", headers)
            token, query = split_query(query)
            if token is not None:
                self._trade_token(request, route, token, path, query)
            websocket = "upgrade" in connection and "websocket" in request.tokens("Upgrade")
            credential = (
                ""
                if route.access == "public"
                else await self._check_access(request, route, request.get(TOKEN_HEADER) or token, cors, target, websocket, peer)
            )
            by_session = credential in ("login", "token cookie")  # a browser's cookie
            upstream_path = rest if route.strip_prefix else path
            upstream_target = upstream_path + ("?" + query if query else "")
            headers = self._upstream_headers(request, connection, route, peer, body_framing, websocket, path, rest)
            if request.get("Expect", "").lower() == "100-continue" and body_framing[0] != "none":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            upstream_head = render_head(f"{method} {upstream_target} HTTP/1.1", headers)
            # what the answer gets of the sidecar's own, replacing the app's: CORS (the port's
            # policy decides for every origin), and no Referer with a token from the query
            own = ResponseRules(RESPONSE_DROP_CORS if route.cors_origins else RESPONSE_DROP, cors)
            if token is not None:
                own = ResponseRules(own.drop | {"referrer-policy"}, cors + NO_REFERRER)
            if by_session:  # an answer for this browser's cookie: no shared cache may give it to others
                own = ResponseRules(own.drop, own.add + VARY_COOKIE)
            if by_session and request.get("Sec-Fetch-Site") is None:
                # a browser that says nothing of where a request comes from (plain http, an old
                # one): a page let in by the login may still not be framed by another origin
                own = ResponseRules(own.drop, own.add + FRAME_SELF)
            if route.scope_cookies:  # the app's cookies stay on its port (a path route shares the hub's origin)
                own = own._replace(cookie_path=route_prefix(path, route.path_depth), strip_prefix=route.strip_prefix)
            if websocket:  # one let in by the token (or its cookie) ends when the token expires
                until = route.token_expires if credential in ("token", "token cookie") else None
                return await self.forward_websocket(route, method, upstream_head, reader, writer, own, version, until)
            return await self.forward(route, method, upstream_head, body_framing, reader, writer, own, keep_alive, version)

    async def _check_access(self, request, route, token: str | None, cors, target: str, websocket: bool, peer: str) -> str:
        """Let the request through, saying by what (``token``, ``token cookie`` or ``login``),
        or raise: 403 or 429 (recorded in the audit log), or a redirect to log in at the hub."""
        client = client_address(request, peer, self.trusted_proxies)

        def deny(status: int, kind: str, message: str, headers=(), detail: str = ""):
            """The refusal, recorded: ``kind`` (a metric label, one of a few) and ``detail``."""
            self.metrics.denied(kind)
            self.denials.record(
                client,
                reason=detail or kind,
                route=route.key,
                owner=route.owner,
                port=route.port,
                method=request.start[0][:20],
                path=target.partition("?")[0][:300],
            )
            return HTTPErrorWithHeaders(status, message, [*cors, *headers])

        if route.access == "disabled":
            raise deny(403, "port disabled", "Unauthorized access (disabled): this port is turned off.")
        if token and route.token_sha256:
            # the right token always gets in (many clients can share one address); wrong ones
            # (and expired ones, refused alike) are counted per server token, whichever of its
            # ports is tried
            verdict = token_verdict(token, route)
            if verdict == "valid":
                return "token"
            wait = self.limiter.retry_after(client, route.token_sha256)
            if wait:
                await asyncio.sleep(LIMITED_PAUSE)  # a guesser over the limit: slowed as well as refused
                raise deny(
                    429,
                    "rate limited",
                    f"Too many wrong tokens from {client}; try again in {wait}s.",
                    [("Retry-After", str(wait))],
                )
            wrong_token = verdict + (" (now rate limited)" if self.limiter.failed(client, route.token_sha256) else "")
        else:
            verdict = wrong_token = ""
        cookies, secure = request.get("Cookie", ""), self._secure(request)
        if self.token_cookies and self.token_cookies.valid(cookies, route, secure) and not token_expired(route):
            if not self._session_may_send(request):
                message = "Refused: the port token's cookie is used only by the port's own pages; send an X-Proxy-Token."
                raise deny(403, "cross-site token cookie", message)
            return "token cookie"
        session = await self.login.session(cookies, route, secure)
        if session is not None:
            user, login_token = session
            if not self._session_may_send(request):
                message = (
                    "Refused: this request came from another page than the port's own (a form, frame, script or"
                    " websocket of another site or port), and your hub login is not used for those. Open the port's"
                    " URL directly, or send an X-Proxy-Token."
                )
                raise deny(403, "cross-site login", message)
            if await self.login.admits(route, user, login_token):
                return "login"
            detail = f"login of {user['name']} not admitted" + (f"; {wrong_token}" if wrong_token else "")
            message = f"Unauthorized access: you are logged in as {user['name']}, and this port is not open to you."
            raise deny(403, "login not admitted", message, detail=detail)
        # a page opened at the top: never a frame, where another page could read the result
        top_level = request.get("Sec-Fetch-Dest", "document") == "document"
        browser_visit = request.start[0] in ("GET", "HEAD") and wants_html(request) and top_level and not websocket
        if browser_visit and not token and self.login.available:
            cookie_path = route_prefix(target.partition("?")[0], route.path_depth)
            headers = self.login.start(self._origin(request), target, cookie_path, self._secure(request))
            raise HTTPErrorWithHeaders(302, "Log in at the hub first.", headers)
        needed = (
            "a valid X-Proxy-Token or a hub login" if route.token_sha256 else "a hub login (tokens are disabled for this port)"
        )
        kind = verdict if wrong_token else "token for a port without tokens" if token else "no credentials"
        raise deny(403, kind, f"Unauthorized access: {needed} is required.", detail=wrong_token)

    def _trade_token(self, request, route, token: str, path: str, query: str) -> None:
        """A browser opening the port at the top with the right token in the query: raise the
        redirect to the same URL without it, with the token's cookie (``token_cookie.py``).
        Anything else (a script, a frame, a wrong token) goes on as before."""
        if self.token_cookies and route.token_sha256 and is_navigation(request) and token_verdict(token, route) == "valid":
            location = "/" + path.lstrip("/\\") + ("?" + query if query else "")  # "//host/" would be another host
            cookie_path = route_prefix(path, route.path_depth)
            headers = self.token_cookies.exchange(route, location, cookie_path, self._secure(request))
            raise HTTPErrorWithHeaders(302, "The token is kept in a cookie of this port.", headers)

    @staticmethod
    def _secure(request) -> bool:
        # the client's scheme comes first: CHP appends its own ("https,http" behind TLS)
        return request.get("X-Forwarded-Proto", "").split(",")[0].strip().lower() in SECURE_SCHEMES

    @classmethod
    def _origin(cls, request) -> str:
        """scheme://host[:port] as the browser addressed this request."""
        return f"{'https' if cls._secure(request) else 'http'}://{request.get('Host', '')}"

    @classmethod
    def _session_may_send(cls, request) -> bool:
        """Whether a request may use the session cookie (CSRF, framing): if it comes from the
        port's own origin; otherwise only as a top-level page opened with GET or HEAD (a link
        followed, a URL typed), or from a client that sends neither ``Origin`` nor
        ``Sec-Fetch-*`` (no browser, or a very old one). Every port host is the same *site*,
        so SameSite=Lax alone would let a sibling port's form, frame or websocket in."""
        origin = request.get("Origin")
        if request.get("Sec-Fetch-Site") == "same-origin" or (origin is not None and origin == cls._origin(request)):
            return True
        if origin is not None or request.start[0] not in ("GET", "HEAD"):
            return False
        mode, dest = request.get("Sec-Fetch-Mode"), request.get("Sec-Fetch-Dest")
        return (mode == "navigate" and dest == "document") or (mode is None and dest is None)

    @staticmethod
    def _cors_headers(route, origin: str | None) -> list[tuple[str, str]]:
        if origin is None:
            return []
        if route.cors_any:
            return [("Access-Control-Allow-Origin", "*")]
        if origin in route.cors_origins:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return []

    async def answer_preflight(self, request, writer, cors, keep_alive: bool) -> bool:
        if not cors:
            raise HTTPError(403, "This origin may not call this port (CORS).")
        asked = request.get("Access-Control-Request-Headers", "").strip()
        headers = [
            *cors,
            ("Access-Control-Allow-Methods", request.get("Access-Control-Request-Method")),
            ("Access-Control-Allow-Headers", ", ".join(h for h in ["X-Proxy-Token", asked] if h)),
            ("Access-Control-Max-Age", "600"),
            ("Content-Length", "0"),
        ]
        if not keep_alive:
            headers.append(("Connection", "close"))
        writer.write(render_head("HTTP/1.1 204 No Content", headers))
        await writer.drain()
        return keep_alive

    def _upstream_headers(self, request, connection, route, peer, body_framing, websocket, path, rest):
        # headers the client names in Connection are hop-by-hop too, but never the Host or
        # the X-Forwarded-* the sidecar passes on
        drop = UPSTREAM_DROP | (connection - FORWARDED) if connection else UPSTREAM_DROP
        headers = []
        forwarded_for = None
        for name, value in request.headers:
            lower = name.lower()
            if lower in drop:
                continue
            if lower == "cookie":
                value = filter_cookies(value)
                if not value:
                    continue
            elif lower == "x-forwarded-for":
                forwarded_for = value
                continue
            elif lower == "referer" and "?" in value:
                value = strip_token_from_referer(value)
            headers.append((name, value))
        headers.append(("X-Forwarded-For", f"{forwarded_for}, {peer}" if forwarded_for else peer))
        if request.get("X-Forwarded-Proto") is None:
            headers.append(("X-Forwarded-Proto", "http"))
        if request.get("X-Forwarded-Host") is None and request.get("Host"):
            headers.append(("X-Forwarded-Host", request.get("Host")))
        if route.strip_prefix:
            headers.append(("X-Forwarded-Prefix", path[: len(path) - len(rest)].rstrip("/") if rest != "/" else path.rstrip("/")))
        if websocket:
            headers += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
        elif body_framing[0] == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        elif body_framing[0] == "length":
            headers.append(("Content-Length", str(body_framing[1])))
        return headers

    async def _open(self, route, reuse: bool = True):
        try:
            if reuse:
                return await self.pool.acquire(route.host, route.port)
            return await self.pool.connect(route.host, route.port)
        except ConnectionRefusedError:
            message = f"Nothing is listening on port {route.port} of {server_words(route)} yet: start the app there, then reload."
            raise HTTPError(502, message) from None
        except (OSError, asyncio.TimeoutError) as e:
            reason = str(e) or type(e).__name__
            raise HTTPError(502, f"The app on port {route.port} of {server_words(route)} is not answering ({reason}).") from None

    async def _read_response_head(self, conn, route):
        # a timer that aborts the connection: much cheaper per request than asyncio.wait_for
        timed_out = []
        loop = asyncio.get_running_loop()
        sent = loop.time()
        timer = loop.call_later(self.upstream_timeout, lambda: (timed_out.append(True), conn.writer.transport.abort()))
        try:
            response = parse_response_head(await conn.reader.readuntil(b"\r\n\r\n"))
            while response.start[1].startswith("1") and response.start[1] != "101":
                response = parse_response_head(await conn.reader.readuntil(b"\r\n\r\n"))  # interim: skip
            self.metrics.upstream_latency.observe(loop.time() - sent)
            return response
        except asyncio.LimitOverrunError:
            raise HTTPError(502, f"The app on port {route.port} sent a response head over 64 KiB.") from None
        except (asyncio.IncompleteReadError, ConnectionError):
            if timed_out:
                raise HTTPError(504, f"The app on port {route.port} did not answer within {self.upstream_timeout:g}s.") from None
            raise _UpstreamClosed() from None
        finally:
            timer.cancel()

    async def forward(self, route, method, upstream_head, body_framing, reader, writer, own, keep_alive, version) -> bool:
        for attempt in (1, 2):
            conn = await self._open(route)
            try:
                conn.writer.write(upstream_head)
                kind, length = body_framing
                if kind == "length":
                    self.metrics.body(route.entry, "to_app", await copy_length(reader, conn.writer, length))
                elif kind == "chunked":
                    self.metrics.body(route.entry, "to_app", await copy_chunked(reader, conn.writer))
                else:
                    await conn.writer.drain()
                response = await self._read_response_head(conn, route)
                break
            except _UpstreamClosed:
                conn.close()
                # a pooled connection the app had closed: retry once if nothing was consumed and
                # the method is safe (the app may have received the request before it closed)
                if attempt == 1 and conn.reused and body_framing[0] == "none" and method in SAFE_METHODS:
                    continue
                raise HTTPError(502, f"The app on port {route.port} closed the connection without answering.") from None
            except ConnectionError:
                conn.close()
                raise HTTPError(502, f"The app on port {route.port} closed the connection.") from None
            except BaseException:
                conn.close()
                raise
        return await self._relay_response(conn, route, response, method, writer, own, keep_alive, version)

    async def _relay_response(self, conn, route, response, method, writer, own, keep_alive, version) -> bool:
        """Send the app's response to the client with framing of our own; pool or close ``conn``."""
        try:
            framing = response_body_framing(response, method)
        except HTTPError:
            conn.close()
            raise
        if route.activity is not None and response.start[1] < "400":  # the app answered: the server is in use
            self.activity.seen(route.activity)
        reusable = framing[0] != "close" and "close" not in response.tokens("Connection") and response.start[0] == "HTTP/1.1"
        headers = response_headers(response, own)
        kind, length = framing
        if kind == "length":
            headers.append(("Content-Length", str(length)))
        elif kind != "none":
            if version == "HTTP/1.1":
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                keep_alive = False  # an HTTP/1.0 client: the end of the body is the end of the connection
        if not keep_alive:
            headers.append(("Connection", "close"))
        head = render_head(f"HTTP/1.1 {response.start[1]} {response.start[2]}", headers)
        try:
            if kind == "length" and length <= SMALL_BODY:
                writer.write(head + (await conn.reader.readexactly(length) if length else b""))
                await writer.drain()
                sent = length
            else:
                writer.write(head)
                sent = 0
                if kind == "length":
                    sent = await copy_length(conn.reader, writer, length)
                elif kind == "chunked":
                    sent = await copy_chunked(conn.reader, writer, rechunk=version == "HTTP/1.1")
                elif kind == "close":
                    sent = await copy_until_close(conn.reader, writer, chunked=version == "HTTP/1.1")
                await writer.drain()
            self.metrics.body(route.entry, "to_client", sent)
        except (ConnectionError, asyncio.IncompleteReadError, HTTPError):
            conn.close()
            return False  # the response is half sent: all we can do is close
        except BaseException:
            conn.close()
            raise
        if reusable and conn.idle_clean():
            self.pool.release(route.host, route.port, conn)
        else:
            conn.close()
        return keep_alive

    async def forward_websocket(self, route, method, upstream_head, reader, writer, own, version, until=None) -> bool:
        """Pipe a websocket once the app accepts it; closed at ``until`` (Unix time) if given."""
        conn = await self._open(route, reuse=False)
        try:
            conn.writer.write(upstream_head)
            await conn.writer.drain()
            response = await self._read_response_head(conn, route)
        except (_UpstreamClosed, ConnectionError):
            conn.close()
            raise HTTPError(502, f"The app on port {route.port} closed the connection.") from None
        except BaseException:
            conn.close()
            raise
        if response.start[1] != "101":  # refused: an ordinary response
            await self._relay_response(conn, route, response, method, writer, own, False, version)
            return False
        # the same filter as any answer; the upgrade's own hop-by-hop headers, set again
        headers = [*response_headers(response, own), ("Connection", "Upgrade"), ("Upgrade", "websocket")]
        expiry = None
        try:
            writer.write(render_head(f"HTTP/1.1 101 {response.start[2]}", headers))
            await writer.drain()
            in_use = (lambda: self.activity.seen(route.activity)) if route.activity is not None else None
            if in_use is not None:
                in_use()
            self.websockets.setdefault(route.entry, set()).add(writer)
            if until is not None:
                expiry = asyncio.get_running_loop().call_later(max(0.0, until - time.time()), writer.close)
            to_app, to_client = await pipe_both(reader, writer, conn.reader, conn.writer, in_use)
            self.metrics.body(route.entry, "to_app", to_app)
            self.metrics.body(route.entry, "to_client", to_client)
        finally:
            conn.close()
            if expiry is not None:
                expiry.cancel()
            open_here = self.websockets.get(route.entry)
            if open_here is not None:
                open_here.discard(writer)
                if not open_here:
                    del self.websockets[route.entry]
        return False

    def _close_websockets(self, key: str) -> None:
        """End the websockets open on a route whose settings changed or that is gone: they
        were let in under the old ones (a revoked token must not keep its websocket)."""
        for writer in self.websockets.pop(key, ()):
            writer.close()

    # ---- the hub's API -------------------------------------------------------------
    async def handle_api(self, request, reader, writer, path, body_framing, keep_alive) -> bool:
        kind, length = body_framing
        if kind == "chunked" or length > MAX_API_BODY:
            raise HTTPError(413, "Send the route as JSON with a Content-Length of at most 1 MiB.")
        body = await reader.readexactly(length) if length else b""
        method = request.start[0]
        head = method == "HEAD"  # the same answer without its body (a probe may ask so)
        if path in self.metrics_paths:
            await self._check_metrics_credential(request)
            gzipped = "gzip" in request.tokens("Accept-Encoding")
            body = await asyncio.to_thread(self.metrics.exposition, gzipped)
            extra = [("Content-Encoding", "gzip")] if gzipped else []
            return await self.send(writer, 200, METRICS_CONTENT_TYPE, body, keep_alive, extra, head)
        if path == READY_PATH:
            ready = asyncio.get_running_loop().time() < self.complete_until
            return await self.send_json(
                writer, 200 if ready else 503, {"ready": ready, "routes": len(self.table.routes)}, keep_alive, head
            )
        if path == HEALTH_PATH or not path.startswith(API_PREFIX):
            return await self.send_json(writer, 200, {"status": "ok", "routes": len(self.table.routes)}, keep_alive, head)
        auth = request.get("Authorization", "").encode("latin-1")
        if not hmac.compare_digest(auth, f"token {self.api_token}".encode("latin-1")):
            raise HTTPError(403, "The sidecar's route API needs the hub's token.")
        if path == BULK_API:
            return await self.handle_bulk(method, body, writer, keep_alive)
        if path == ACTIVITY_API:
            return await self.send_json(writer, 200, self.activity.answer(activity_since(request.start[1])), keep_alive)
        if not path.startswith(ROUTES_API):
            raise HTTPError(404, "Unknown sidecar API path.")
        key = route_key(path[len(ROUTES_API) :])
        if method == "GET":
            return await self.send_json(writer, 200, self.table.as_dict(), keep_alive)
        if method == "POST":
            try:
                self.table.set(key, json.loads(body))
            except (ValueError, TypeError, AttributeError) as e:
                raise HTTPError(400, f"Bad route data for {key}: {e}") from None
            return await self.send_json(writer, 201, {"created": key}, keep_alive)
        if method == "DELETE":
            if not self.table.delete(key):
                raise HTTPError(404, f"No route {key}.")
            self.metrics.forget(key)
            return await self.send_json(writer, 204, None, keep_alive)
        raise HTTPError(405, "Use GET, POST or DELETE.")

    async def handle_bulk(self, method: str, body: bytes, writer, keep_alive: bool) -> bool:
        """``POST {"add": {path: data, ...}, "delete": [path, ...]}``: many changes in one
        request (a hub starting with thousands of servers). Adds are checked first: a bad
        one refuses the whole request and changes nothing. ``{"complete": true, "valid_for":
        seconds or null}``: the table is now the hub's whole table (the end of a
        reconciliation), for that long."""
        if method != "POST":
            raise HTTPError(405, "Use POST.")
        try:
            changes = json.loads(body)
            valid_for = changes.get("valid_for")
            if not (
                valid_for is None or (isinstance(valid_for, (int, float)) and not isinstance(valid_for, bool) and valid_for > 0)
            ):
                raise ValueError("valid_for must be null or a positive number of seconds")
            add = {route_key(k): v for k, v in changes.get("add", {}).items()}
            delete = [route_key(k) for k in changes.get("delete", [])]
            self.table.set_many(add)
        except (ValueError, TypeError, AttributeError) as e:
            raise HTTPError(400, f"Bad bulk route data: {e}") from None
        deleted = 0
        for key in delete:
            if self.table.delete(key):
                self.metrics.forget(key)
                deleted += 1
        if changes.get("complete") is True:
            self.complete_until = asyncio.get_running_loop().time() + valid_for if valid_for else float("inf")
        return await self.send_json(writer, 200, {"added": len(add), "deleted": deleted}, keep_alive)

    async def _check_metrics_credential(self, request) -> None:
        """As the hub's ``/hub/metrics``: a token with ``read:metrics`` (or the hub's own)."""
        if not self.authenticate_metrics:
            return
        scheme, _, token = request.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() in ("token", "bearer") and token:
            if hmac.compare_digest(token.encode("latin-1"), self.api_token.encode("latin-1")):
                return
            if await self.login.token_has_scope(token, "read:metrics"):
                return
        raise HTTPError(403, "The sidecar's metrics need a JupyterHub token with the scope read:metrics.")

    @property
    def metrics_paths(self) -> tuple[str, ...]:
        own = METRICS_PATH
        return (own, self.service_prefix.rstrip("/") + "/metrics") if self.service_prefix else (own,)

    @classmethod
    async def send_json(cls, writer, status: int, data, keep_alive: bool, head: bool = False) -> bool:
        body = b"" if data is None else json.dumps(data).encode()
        return await cls.send(writer, status, "application/json", body, keep_alive, head=head)

    @staticmethod
    async def send(writer, status: int, content_type: str, body: bytes, keep_alive: bool, extra=(), head: bool = False) -> bool:
        """An answer of the sidecar's own; ``head``: its headers only (a HEAD request)."""
        headers = [("Content-Type", content_type), *extra] + ([("Content-Length", str(len(body)))] if status != 204 else [])
        if not keep_alive:
            headers.append(("Connection", "close"))
        writer.write(render_head(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", headers) + (b"" if head else body))
        await writer.drain()
        return keep_alive


def server_words(route) -> str:
    """Whose server a route leads to, in words: ``alice's server``, ``alice's server dev``."""
    if not route.owner:
        return "its server"
    return f"{route.owner}'s server" + (f" {route.servername}" if route.servername else "")


def error_response(error: HTTPError, extra=(), page: str | None = None) -> bytes:
    """A whole answer that ends the connection: the HTML ``page``, else JSON with the
    status and the message."""
    if page is not None:
        body, kind = page.encode(), "text/html; charset=utf-8"
    else:
        body, kind = json.dumps({"status": error.status, "message": error.message}).encode(), "application/json"
    headers = [("Content-Type", kind), ("Content-Length", str(len(body))), *extra, ("Connection", "close")]
    return render_head(f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}", headers) + body


class HeadDeadline:
    """Slowloris: a request head, once begun, must be complete within one to two
    ``timeout`` periods, else 408 and the connection closes. An idle keep-alive connection
    (nothing begun) is closed after ``idle_timeout`` seconds, checked every ``timeout``: CHP
    keeps its connections to the sidecar as long as they work and does not retry a request
    on one closed under it, so this is minutes, far longer than CHP leaves one unused
    while it has requests to send."""

    __slots__ = ("begun", "first", "handle", "idle_until", "reader", "timeout", "writer")

    def __init__(self, timeout: float, reader, writer, idle_timeout: float = 0, first: bool = False):
        self.timeout, self.reader, self.writer = timeout, reader, writer
        self.first = first  # waiting for the connection's first request
        self.begun = False
        loop = asyncio.get_running_loop()
        self.idle_until = loop.time() + idle_timeout if idle_timeout else float("inf")
        self.handle = loop.call_later(min(timeout, idle_timeout or timeout), self._check)

    def pending(self) -> bytes:
        """What has arrived of the next request head."""
        return getattr(self.reader, "_buffer", b"")

    def _check(self) -> None:
        pending = self.pending()
        if self.writer.is_closing() or b"\r\n\r\n" in pending:
            return  # a whole head, its task about to resume: not late
        if pending and self.begun:
            self.writer.write(error_response(HTTPError(408, "The request head did not arrive in time.")))
            self.writer.close()
            return
        loop = asyncio.get_running_loop()
        idle_left = self.idle_until - loop.time()
        if not pending and idle_left <= 0:
            self.writer.close()  # idle too long: closed without a word, as keep-alive allows
            return
        self.begun = bool(pending)
        self.handle = loop.call_later(min(self.timeout, idle_left) if not pending else self.timeout, self._check)

    def cancel(self) -> None:
        self.handle.cancel()


class HTTPErrorWithHeaders(HTTPError):
    """An answer that ends the request, with headers: an error with CORS headers (so that a
    browser can read the reason), or a redirect with its Location and cookies."""

    def __init__(self, status, message, headers):
        super().__init__(status, message)
        self.headers = headers


async def serve(sidecar: Sidecar, host: str, port: int):
    return await asyncio.start_server(sidecar.serve_connection, host, port, limit=MAX_HEAD, backlog=1024)
