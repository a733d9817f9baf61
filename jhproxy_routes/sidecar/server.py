"""The auth sidecar: checks every request to a protected port and streams it to the app.

Per request (an ``Exchange``, read by a ``ClientConnection``): find the route (longest
prefix), answer a CORS preflight, check the access (``access.py``: public, disabled, or
restricted: the port token, its cookie, or a hub login), strip credentials, and forward to
the app over a pooled keep-alive connection (``relay.py``: transport to transport, bodies
streamed, never buffered whole). Every answer of the app, a websocket's 101 included, passes
one filter (``forward.py``): no hub or sidecar cookie, the port's CORS policy instead of the
app's. Websocket upgrades become a byte pipe once the app answers 101. The check is made for
every request, never per connection: CHP reuses its connections to the sidecar across
clients.

Message framing is never taken from the other side as is: the sidecar drops the incoming
``Content-Length`` and ``Transfer-Encoding`` and writes its own from what it parsed, so
client, sidecar and app always agree where a message ends (no smuggling through the pool).

The hub keeps the table up to date through a CHP-like API (``api.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from ..audit import AuditLog, DenialLog
from ..http1 import Answer, HTTPError
from ..logsafe import shown
from .access import Access, split_query
from .activity import ServerActivity
from .api import HubAPI
from .connection import ClientConnection
from .forward import response_rules, upstream_head
from .login import TICKET_QUERY, HubLogin, route_prefix
from .login_recheck import LoginRecheck
from .metrics import SidecarMetrics
from .ratelimit import BadTokenLimiter
from .relay import Relay, UpstreamPool
from .table import RouteTable
from .token_cookie import TokenCookies

log = logging.getLogger("jhproxy_routes.sidecar")

MAX_TICK, MIN_TICK = 0.5, 0.05  # seconds between deadline checks


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
        # connections waiting for a request head, longest waiting first (a dict as an
        # ordered set), and relays waiting for an app's answer: checked at every tick
        self.idle_clients: dict = {}
        self.awaiting_answer: dict = {}
        # JupyterHub checks a managed service at its prefix: answer there as at /health
        self.service_prefix = service_prefix or os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "")
        self.login = login or HubLogin(api_token)
        self.hub_page = hub_page  # where a user manages their ports: linked from error pages
        self.table = RouteTable(on_change=self._close_open_answers)
        self.pool = UpstreamPool(connect_timeout=connect_timeout)
        self.activity = ServerActivity()
        # table entry -> Relays of its open answers (websockets, and bodies streamed for long)
        self.open_answers: dict[str, set] = {}
        # those let in by a hub login, checked again as long as they are open
        self.login_recheck = LoginRecheck(self.login, self.login.cache_max_age)
        self.metrics = SidecarMetrics(
            lambda: len(self.table.routes), metrics_by_route, self.table.has, self.activity.pending_seconds
        )
        self.access = Access(
            self.login,
            # a port token opened in a browser traded for a cookie of the port (None: never)
            TokenCookies(api_token) if token_cookies else None,
            limiter or BadTokenLimiter(),
            DenialLog(audit or AuditLog(None)),
            self.metrics,
            trusted_proxies,
        )
        self.api = HubAPI(self, authenticate_metrics)
        self._tasks: set[asyncio.Task] = set()
        self._last_sweep = 0.0  # when the pool's idle connections were last looked at

    # ---- one request -----------------------------------------------------------------------
    def dispatch(self, ex) -> None:
        """Answer or forward the request ``ex``: here at once where nothing needs waiting
        for, else in a task (the hub's API, a login, an access check that asks the hub)."""
        try:
            self._dispatch(ex)
        except HTTPError as e:
            ex.fail(e, self.hub_page)

    def _dispatch(self, ex) -> None:
        # a port with a host of its own: everything on that host is the port's
        found = self.table.lookup(ex.path, ex.header("Host", "").split(":")[0]) if self.table.by_host else None
        if found is None:
            if ex.path == self.login.callback_path:
                self.spawn(ex, self._finish_login(ex))
                return
            if ex.path == self.service_prefix and ex.wants_html:  # the hub's Services menu links here
                ex.answer(Answer(302, "Your ports are managed on the hub.", [("Location", self.hub_page)]), self.hub_page)
                return
            if self.api.serves(ex.path):
                self.spawn(ex, self.api.answer(ex))
                return
            found = self.table.lookup(ex.path)
        if found is None:
            # CHP sent it here, so the hub is about to tell us about it (or just removed it)
            raise HTTPError(503, "This port route is not (or no longer) known to the sidecar; try again shortly.")
        ex.route, ex.rest = found
        ex.count_in(self.metrics)
        if ex.websocket and ex.body.kind != "none":  # its body would reach the app as a request of its own
            raise HTTPError(400, "A websocket upgrade request cannot have a body.")
        if opens_bare_root(ex):
            location = route_prefix(ex.path, ex.route.path_depth) + "/" + ("?" + ex.query if ex.query else "")
            ex.answer(Answer(308, "The port's page is below its path.", [("Location", location)]), self.hub_page)
            return
        origin = ex.header("Origin")
        ex.cors = self.access.cors_headers(ex.route, origin)
        if ex.method == "OPTIONS" and origin is not None and ex.header("Access-Control-Request-Method"):
            ex.outcome = "preflight"
            ex.reply(204, self.access.preflight(ex))
            return
        ticket, query = split_query(ex.query, TICKET_QUERY)
        if ticket is not None and self.login.available:  # back from logging in at the hub
            cookie_path = route_prefix(ex.path, ex.route.path_depth)
            headers = self.login.land(ticket, ex.header("Cookie", ""), ex.route, cookie_path, ex.secure)
            ex.answer(Answer(302, "Logged in.", headers), self.hub_page)
            return
        ex.token, ex.query = split_query(query)
        if ex.token is not None and (traded := self.access.trade_token(ex)) is not None:
            ex.answer(traded, self.hub_page)
            return
        credential = self.access.quick(ex)
        if credential is None:
            self.spawn(ex, self._check_then_forward(ex))
        else:
            self.forward(ex, credential)

    async def _check_then_forward(self, ex) -> None:
        verdict = await self.access.check(ex)
        if isinstance(verdict, Answer):
            ex.answer(verdict, self.hub_page)
        elif not ex.ended:
            self.forward(ex, verdict)

    async def _finish_login(self, ex) -> None:
        headers = await self.login.finish(ex.query, ex.origin, self.table)
        ex.answer(Answer(302, "Logged in; back to the port.", headers), self.hub_page)

    def forward(self, ex, credential: str) -> None:
        ex.credential = credential
        ex.own = response_rules(ex)
        if ex.header("Expect", "").lower() == "100-continue" and ex.body.kind != "none":
            ex.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # a websocket or a streamed answer let in by the token (or its cookie) ends when the token expires
        until = ex.route.token_expires if credential in ("token", "token cookie") else None
        ex.relay = Relay(self, ex, upstream_head(ex), until)
        ex.relay.start()

    def spawn(self, ex, work) -> None:
        """Run ``work`` (a coroutine answering ``ex``) in a task: an HTTPError it raises is
        the answer; anything else is logged, and the connection closed."""

        async def run():
            try:
                await work
            except HTTPError as e:
                ex.fail(e, self.hub_page)
            except ConnectionError:  # the client went away while its request was read
                ex.abort()
            except Exception:
                log.exception("unexpected error answering a request from %s", ex.peer)
                ex.abort()
                ex.client.close()

        self.background(run())

    def background(self, work) -> None:
        """Run ``work`` (a coroutine) in a task of the sidecar's own, kept until it ends."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def client_gone(self, ex) -> None:
        """The client closed its connection while ``ex`` was being answered."""
        if ex.relay is not None:
            ex.relay.client_gone()
        else:
            ex.abort()

    def foreign_listener(self, ex, uid: int | None) -> None:
        """A connection for ``ex`` reached another system user's listener (``uid``; None:
        nobody's known): logged, counted and audited as a refusal; the page never names them."""
        route = ex.route
        reason = "another user's listener" if uid is not None else "listener's owner unknown"
        log.warning(
            "refused %s %s: the listener on port %i is uid %s's, not uid %i's (%s's server)",
            shown(ex.method),
            shown(ex.path),
            route.port,
            uid,
            route.uid,
            shown(route.owner),
        )
        self.access.record_denial(ex, reason, listener_uid=uid)

    # ---- deadlines ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Check every deadline, a few times per timeout period: one timer for all the
        connections instead of one per request."""
        # the next tick first: whatever goes wrong in this one, the deadlines hold
        asyncio.get_running_loop().call_later(
            max(MIN_TICK, min(MAX_TICK, self.client_timeout / 2, self.upstream_timeout / 2)), self.tick
        )
        now = time.monotonic()  # the clock every deadline was taken on
        for client in list(self.idle_clients):
            client.check_deadline(now)
        for relay in [r for r in self.awaiting_answer if now - r.sent_at >= self.upstream_timeout]:
            relay.time_out()
        if now - self._last_sweep >= self.pool.idle_timeout:
            self._last_sweep = now
            self.pool.sweep()

    # ---- what relays tell ------------------------------------------------------------------
    def in_use(self, route) -> None:
        """A request or websocket frame of a route passed: its server is in use."""
        if route.activity is not None:
            self.activity.seen(route.activity)

    def answer_open(self, relay) -> None:
        """A websocket opened, or an answer's body goes on after its first piece: ended
        when its route changes (``_close_open_answers``) or, let in by a login, when that
        no longer gets in (``login_recheck``)."""
        self.open_answers.setdefault(relay.route.entry, set()).add(relay)
        if relay.exchange.credential == "login":
            self.login_recheck.add(relay, relay.exchange.login_token)

    def answer_closed(self, relay) -> None:
        self.login_recheck.discard(relay)
        open_here = self.open_answers.get(relay.route.entry)
        if open_here is not None:
            open_here.discard(relay)
            if not open_here:
                del self.open_answers[relay.route.entry]

    def _close_open_answers(self, key: str) -> None:
        """End the websockets and streamed answers open on a route whose settings changed or
        that is gone: they were let in under the old ones (a revoked token must not keep them)."""
        for relay in self.open_answers.pop(key, ()):
            relay.close()


def opens_bare_root(ex) -> bool:
    """A browser opening a path route's own path without the trailing slash
    (``/ports/alice/7860``, as Streamlit and Gradio print their URLs, or as typed): it gets
    the slash form, where every framework's page works and its relative URLs resolve below
    the route (Gradio's and Voila's pages answer 404 without it). Scripts (no ``text/html``)
    and other methods reach the app as sent: a POST to the bare path keeps working."""
    route = ex.route
    return (
        not route.by_host
        and ex.method in ("GET", "HEAD")
        and ex.wants_html
        and not ex.websocket
        and not ex.path.endswith("/")
        and len([p for p in ex.path.split("/") if p]) == route.path_depth
    )


async def serve(sidecar: Sidecar, host: str, port: int):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientConnection(sidecar), host, port, backlog=1024)
    sidecar.tick()
    if sidecar.login.available:
        sidecar.background(sidecar.login_recheck.run())
    return server
