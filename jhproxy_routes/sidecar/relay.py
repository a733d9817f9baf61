"""Forwarding, transport to transport: a request's head and body to the app, the app's
answer back to the client, and a websocket's frames both ways once the app answers 101.

Bytes are handed from one transport straight to the other in the protocols' callbacks (no
stream buffers, no task per request): a body's framing is checked as it passes
(``http1.LengthBody``, ``ChunkedBody``, ``UntilCloseBody``) and written anew, and when the
receiving side's writes back up, reading from the sending side pauses (flow control). Apps
are reached over pooled keep-alive connections (``UpstreamPool``): CHP pools its connections
to the sidecar across clients, and a small request costs no new TCP connection.

On a shared host (a route with a ``uid``), a new connection to an app is used only if the
socket that accepted it belongs to that system user (``procnet.accepted_uid``), checked
before any byte is sent on it: whoever holds the port when the connection is made, and
whatever listens there later, this connection reaches that listener and no other. Pooled
connections are kept per (host, port, uid), so one route never takes a connection that
was checked for another user.

An app that serves TLS itself (a port's ``protocol`` ``https``; its route's target is
``https://``) is reached over TLS, begun once the connection is known to be the right
listener's: no byte of the handshake goes to another user's. Its certificate is not
verified (``APP_TLS``): it is usually self-signed, the hop runs inside the hub's network,
and the visitor's side is the proxy's TLS. Pooled connections are kept per (host, port,
uid, TLS): a plain one never carries a TLS route's request, nor the other way round.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import defaultdict, deque

from .. import procnet
from ..http1 import MAX_HEAD, HTTPError, UntilCloseBody, body_reader, parse_response_head, render_head, response_body_framing
from .forward import response_headers

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # retried once on a fresh connection
WRITE_BUFFER_HIGH = 256 * 1024  # bytes waiting to be sent before the other side pauses
OWNER_LOOKUPS = 3  # reads of the socket tables for a connection's accepted end (the row may come late)
TLS_RECORD_TYPES = (b"\x15", b"\x16")  # what a TLS server's first byte is (an alert, a handshake), never HTTP's
TO_HTTPS = "start the app without TLS, or ask the hub's admin to set this port's protocol to https"


def app_tls_context() -> ssl.SSLContext:
    """TLS to apps that serve it themselves: HTTP/1.1 (ALPN), certificate not verified."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


APP_TLS = app_tls_context()


class TLSFailed(Exception):
    """A new connection reached the app, but no TLS session could be begun on it."""


class ForeignListener(Exception):
    """A new connection reached a listener of another system user than the route's
    (``uid``; None: no row of the accepted end was found, so no owner is known)."""

    def __init__(self, uid: int | None):
        super().__init__(uid)
        self.uid = uid


async def listener_uid(transport) -> int | None:
    """The uid of the listener a new connection reached (its accepted end's), None if
    unknown: asked of the kernel (microseconds), else read from its socket tables in a
    thread (milliseconds)."""
    local, peer = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
    for attempt in range(OWNER_LOOKUPS):
        if attempt:
            await asyncio.sleep(0.01 * attempt)
        try:
            uid = procnet.accepted_uid(local, peer)
        except OSError:  # no sock_diag here
            uid = await asyncio.to_thread(procnet.accepted_uid_in_tables, local, peer)
        if uid is not None:
            return uid
    return None


class AppConnection(asyncio.Protocol):
    """A connection to an app, used for one request at a time by its ``relay``. Until the
    app first answers on it, it counts as opening (``UpstreamPool.connect``)."""

    __slots__ = ("address", "closed", "idle_since", "opening", "relay", "reused", "transport", "writes_paused")

    def __init__(self):
        self.transport = None
        self.relay: Relay | None = None
        self.idle_since = 0.0
        self.reused = False
        self.closed = False
        self.writes_paused = False
        self.opening: UpstreamPool | None = None  # the pool counting it as opening
        self.address = ("", 0)

    def answered(self) -> None:
        """The app has taken this connection (it answered on it, or it is gone)."""
        pool, self.opening = self.opening, None
        pool.opened(self.address)

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    def data_received(self, data: bytes) -> None:
        if self.opening is not None:
            self.answered()
        if self.relay is not None:
            self.relay.from_app(data)
        else:  # an idle connection the app wrote to: not clean any more
            self.close()

    def eof_received(self) -> None:
        if self.relay is not None:
            self.relay.app_closed()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.opening is not None:
            self.answered()
        if self.relay is not None:
            self.relay.app_closed()

    def pause_writing(self) -> None:
        self.writes_paused = True
        if self.relay is not None:
            self.relay.client.pause_reading("app")

    def resume_writing(self) -> None:
        self.writes_paused = False
        if self.relay is not None:
            self.relay.client.resume_reading("app")

    async def start_tls(self, host: str, timeout: float) -> None:
        """Speak TLS from now on (raises TLSFailed): the handshake, then the TLS transport
        in place of the plain one."""
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, APP_TLS, server_hostname=host, ssl_handshake_timeout=timeout)
        except (OSError, asyncio.TimeoutError, TimeoutError) as e:  # ssl.SSLError is an OSError
            raise TLSFailed(str(e) or type(e).__name__) from None
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    def close(self) -> None:
        self.closed = True
        self.relay = None
        self.transport.close()


class UpstreamPool:
    """Idle connections to the apps, per address (host, port, and the uid its listener
    must have, or None): dropped when the app closed them or they idled ``idle_timeout``
    seconds; at most ``max_idle`` kept per address.

    At most ``max_opening`` new connections to one app wait for its first answer at a time;
    more requests wait for one of those to answer, or for a connection back in the pool. A
    connection is established by the kernel before the app accepts it: a burst of hundreds
    would overflow a busy app's listen backlog (100 in asyncio, 128 in tornado and werkzeug),
    and the kernel then resets connections the sidecar has already sent a request on."""

    def __init__(self, connect_timeout: float = 10, idle_timeout: float = 4, max_idle: int = 64, max_opening: int = 64):
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.max_opening = max_opening
        self.idle: dict[tuple, list[AppConnection]] = defaultdict(list)
        self.opening: dict[tuple, int] = {}  # per address: connections not yet answered on
        self.waiting: dict[tuple, deque] = {}  # per address: futures of requests waiting to connect

    def take(self, address: tuple[str, int, int | None, bool]) -> AppConnection | None:
        """An idle pooled connection that still looks open, or None."""
        idle = self.idle.get(address)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.idle_timeout and not conn.closed and not conn.transport.is_closing():
                conn.reused = True
                return conn
            conn.close()
        return None

    async def connect(self, address: tuple[str, int, int | None, bool]) -> AppConnection:
        """A connection for one request: a new one, or a pooled one that came back while
        this request waited for its turn to open one. Raises ForeignListener (after
        closing it) for a new one whose listener is not the address's uid's, TLSFailed for
        one to a TLS address that did not complete the handshake."""
        loop = asyncio.get_running_loop()
        host, port, uid, tls = address
        while self.opening.get(address, 0) >= self.max_opening:
            turn = loop.create_future()
            self.waiting.setdefault(address, deque()).append(turn)
            await turn
            conn = self.take(address)
            if conn is not None:
                self._wake(address)  # the turn it did not use
                return conn
        self.opening[address] = self.opening.get(address, 0) + 1
        conn = None
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(AppConnection, host, port), self.connect_timeout)
            if uid is not None:
                if (owner := await listener_uid(conn.transport)) != uid:
                    raise ForeignListener(owner)
                if conn.closed:  # while it was checked (an app that writes first is closed too)
                    raise ConnectionResetError("the app closed the connection at once")
            if tls:
                await conn.start_tls(host, self.connect_timeout)
        except BaseException:
            if conn is not None:
                conn.close()
            self.opened(address)
            raise
        conn.opening, conn.address = self, address
        return conn

    def opened(self, address: tuple) -> None:
        """A connection to ``address`` no longer counts as opening: the next waiter's turn."""
        left = self.opening[address] - 1
        if left:
            self.opening[address] = left
        else:
            del self.opening[address]
        self._wake(address)

    def _wake(self, address: tuple) -> None:
        waiting = self.waiting.get(address)
        while waiting:
            turn = waiting.popleft()
            if not turn.done():  # not given up (its request's task cancelled)
                turn.set_result(None)
                break
        if not waiting:
            self.waiting.pop(address, None)

    def release(self, conn: AppConnection) -> None:
        """Back to the idle connections of its address."""
        conn.relay = None
        conn.transport.resume_reading()  # paused if the client's writes backed up at the end
        idle = self.idle[conn.address]
        # a connection whose writes are paused (the app stopped reading) would carry that
        # over to the next request, whose relay never hears of it: not kept
        if len(idle) >= self.max_idle or conn.closed or conn.transport.is_closing() or conn.writes_paused:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)
        self._wake(conn.address)  # a request waiting for its turn to connect takes this one

    def sweep(self) -> None:
        """Close the connections idle over ``idle_timeout`` (the longest idle come first)."""
        now = time.monotonic()
        for address in list(self.idle):
            idle = self.idle[address]
            while idle and now - idle[0].idle_since >= self.idle_timeout:
                idle.pop(0).close()
            if not idle:
                del self.idle[address]

    def close_all(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()


class Relay:
    """One request forwarded: ``start`` sends it (a pooled connection, else a new one), the
    answer streams back as it arrives, and ``done`` ends the exchange. A pooled connection the
    app had closed is tried once more on a fresh one, for a safe method without a body (the
    app may have received the request before it closed)."""

    __slots__ = (
        "app",
        "body",
        "client",
        "exchange",
        "expiry",
        "head",
        "keep_alive",
        "open",
        "pending",
        "response",
        "retried",
        "reusable",
        "sent_at",
        "sidecar",
        "state",
        "timed_out",
        "to_app",
        "to_client",
        "until",
    )

    def __init__(self, sidecar, exchange, head: bytes, until: float | None = None):
        self.sidecar = sidecar  # its pool, metrics, timeouts, open websockets
        self.exchange = exchange
        self.client = exchange.client
        self.head = head  # the request head for the app
        self.until = until  # an answer kept open: closed at this Unix time (its token's expiry)
        self.app: AppConnection | None = None
        self.state = "connecting"  # sending, head, body, websocket, done
        self.pending = bytearray()  # the app's answer so far, while its head is incomplete
        self.body = None  # the body being read: the request's, then the response's
        self.response = None
        self.retried = self.timed_out = self.keep_alive = self.reusable = False
        self.expiry = None
        self.open = False  # in the sidecar's open answers (``_keep_open``)
        self.sent_at = 0.0
        self.to_app = self.to_client = 0

    @property
    def route(self):
        return self.exchange.route

    # ---- the request -----------------------------------------------------------------------
    def start(self) -> None:
        conn = None if self.exchange.websocket else self.sidecar.pool.take(self.route.upstream)
        if conn is not None:
            self.send(conn)
        else:
            self.sidecar.spawn(self.exchange, self._connect())

    async def _connect(self) -> None:
        route = self.route
        try:
            conn = await self.sidecar.pool.connect(route.upstream)
        except ForeignListener as e:
            self.sidecar.foreign_listener(self.exchange, e.uid)
            if e.uid is None:
                message = f"Could not tell whose app listens on port {route.port} on this machine, so nothing was sent there; try again."
            else:
                message = (
                    f"Port {route.port} on this machine is another user's: the app listening there does not belong"
                    f" to {server_words(route)}, and nothing was sent to it. Start the app on a free allowed port."
                )
            self.fail(HTTPError(502, message))
            return
        except ConnectionRefusedError:
            message = f"Nothing is listening on port {route.port} of {server_words(route)} yet: start the app there, then reload."
            if route.found:
                message = f"Nothing answers on port {route.port} of {server_words(route)}: {route.found}."
            self.fail(HTTPError(502, message))
            return
        except TLSFailed as e:
            message = (
                f"The app on port {route.port} of {server_words(route)} does not speak HTTPS ({e}), and this port is"
                " set up for apps that serve HTTPS themselves: start it with its TLS certificate, or ask the hub's"
                " admin to set this port's protocol to http."
            )
            self.fail(HTTPError(502, message))
            return
        except (OSError, asyncio.TimeoutError) as e:
            reason = str(e) or type(e).__name__
            self.fail(HTTPError(502, f"The app on port {route.port} of {server_words(route)} is not answering ({reason})."))
            return
        if self.state == "done":  # the client went away meanwhile
            conn.close()
            return
        self.send(conn)

    def send(self, conn: AppConnection) -> None:
        self.app = conn
        conn.relay = self
        self.state = "sending"
        self.body = body_reader(self.exchange.body)
        if self.body is None:
            conn.transport.write(self.head)
            self.request_sent()
            return
        data = self.client.take_buffer()
        try:
            out, used = self.body.feed(data)
        except HTTPError as e:
            self.fail(e)
            return
        conn.transport.write(self.head + out)
        if self.body.done:
            self.client.give_back(data[used:])
            self.request_sent()
        else:
            self.client.receiver = self.from_client

    def from_client(self, data: bytes) -> None:
        """A piece of the request body."""
        try:
            out, used = self.body.feed(data)
        except HTTPError as e:
            self.fail(e)
            return
        if out:
            self.app.transport.write(out)
        if self.body.done:
            self.client.receiver = None
            self.client.give_back(data[used:])
            self.request_sent()

    def request_sent(self) -> None:
        if self.body is not None:
            self.sidecar.metrics.body(self.route.entry, "to_app", self.body.size)
        self.body = None
        self.sent_at = time.monotonic()
        self.sidecar.awaiting_answer[self] = None  # until the answer's head (upstream_timeout)
        self.state = "head"
        if self.pending:  # the app answered early
            self.app.transport.resume_reading()
            self._read_head()

    def time_out(self) -> None:
        self.timed_out = True
        self.app.transport.abort()

    # ---- the answer ------------------------------------------------------------------------
    def from_app(self, data: bytes) -> None:
        if self.state == "body":
            self._body_piece(data)
        elif self.state == "websocket":
            self.to_client += len(data)
            self.sidecar.in_use(self.route)
            self.client.write(data)
        elif self.state in ("head", "sending"):
            self.pending += data
            if self.state == "head":
                self._read_head()
            elif len(self.pending) > MAX_HEAD:
                self.app.transport.pause_reading()  # resumed when the request is sent

    def _read_head(self) -> None:
        if self.pending[:1] in TLS_RECORD_TYPES and not self.route.tls:
            message = (
                f"The app on port {self.route.port} of {server_words(self.route)} answered in TLS: it serves HTTPS,"
                f" and this port is set up for plain HTTP: {TO_HTTPS}."
            )
            self.fail(HTTPError(502, message))
            return
        while True:
            end = self.pending.find(b"\r\n\r\n")
            if end < 0 or end > MAX_HEAD:
                if end > MAX_HEAD or len(self.pending) > MAX_HEAD:
                    self.fail(HTTPError(502, f"The app on port {self.route.port} sent a response head over 64 KiB."))
                return
            try:
                response = parse_response_head(bytes(self.pending[: end + 4]))
            except HTTPError as e:
                self.fail(e)
                return
            del self.pending[: end + 4]
            if response.start.status == "101" and not self.exchange.websocket:
                self.fail(HTTPError(502, f"The app on port {self.route.port} switched protocols unasked."))
                return
            if not response.start.status.startswith("1") or response.start.status == "101":
                break  # interim answers (100 Continue, 103) are skipped
        del self.sidecar.awaiting_answer[self]
        self.sidecar.metrics.upstream_latency.observe(time.monotonic() - self.sent_at)
        rest = bytes(self.pending)
        self.pending.clear()
        if self.exchange.websocket and response.start.status == "101":
            self._upgrade(response, rest)
        else:
            self._respond(response, rest)

    def _respond(self, response, rest: bytes) -> None:
        ex = self.exchange
        try:
            framing = response_body_framing(response, ex.method)
        except HTTPError as e:
            self.fail(e)
            return
        status = response.start.status
        if self.route.activity is not None and status < "400":  # the app answered: the server is in use
            self.sidecar.activity.seen(self.route.activity)
        self.reusable = (
            framing.kind != "close"
            and "close" not in response.tokens("Connection")
            and response.start.version == "HTTP/1.1"
            and not ex.websocket
        )
        keep_alive = ex.keep_alive and not ex.websocket
        headers = response_headers(response, ex.own)
        if framing.kind == "length":
            headers.append(("Content-Length", str(framing.length)))
        elif framing.kind != "none":
            if ex.version == "HTTP/1.1":
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                keep_alive = False  # an HTTP/1.0 client: the end of the body is the end of the connection
        if not keep_alive:
            headers.append(("Connection", "close"))
        self.keep_alive = keep_alive
        head = render_head(f"HTTP/1.1 {status} {response.start.reason}", headers)
        self.body = body_reader(framing, chunked_out=ex.version == "HTTP/1.1")
        self.client.source = self.app.transport
        if self.client.writes_paused:
            self.app.transport.pause_reading()
        self.state = "body"
        if self.body is None:
            self.client.write(head)
            self._done(rest)
            return
        self._body_piece(rest, head)
        if self.state == "body":  # more to come: it may go on for long (events, a download)
            self._keep_open()

    def _keep_open(self) -> None:
        """An answer that stays open (a websocket, a body still coming): the sidecar ends it
        when its route changes or its login no longer gets in, and so does the expiry of the
        token that let it in."""
        self.open = True
        self.sidecar.answer_open(self)
        if self.until is not None:
            self.expiry = asyncio.get_running_loop().call_later(max(0.0, self.until - time.time()), self.close)

    def _closed(self) -> None:
        if self.open:
            self.open = False
            self.sidecar.answer_closed(self)
        if self.expiry is not None:
            self.expiry.cancel()

    def _body_piece(self, data: bytes, head: bytes = b"") -> None:
        """A piece of the answer's body (after its ``head``, written with it in one send)."""
        try:
            out, used = self.body.feed(data)
        except HTTPError:
            self.client.write(head)
            self._abort()  # the answer is half sent: all there is to do is close
            return
        self.client.write(head + out if head else out)
        if self.body.done:
            self._done(data[used:])

    def _done(self, extra: bytes) -> None:
        """The whole answer is sent: the app's connection back to the pool if clean."""
        self.state = "done"
        self._closed()
        size = self.body.size if self.body is not None else 0
        self.sidecar.metrics.body(self.route.entry, "to_client", size)
        app, self.app = self.app, None
        if self.reusable and not extra and not app.closed:
            self.sidecar.pool.release(app)
        else:
            app.close()
        self.exchange.end(self.keep_alive)

    def app_closed(self) -> None:
        """The app closed the connection (or it was aborted)."""
        if self.state == "body" and isinstance(self.body, UntilCloseBody):
            self.client.write(self.body.end())
            self._done(b"")
        elif self.state in ("sending", "head"):
            self.app.close()
            if self.timed_out:
                self.fail(
                    HTTPError(504, f"The app on port {self.route.port} did not answer within {self.sidecar.upstream_timeout:g}s.")
                )
            elif self.state == "head" and self._may_retry():
                self.retried = True
                self.app, self.state = None, "connecting"
                self.pending.clear()  # anything the closed connection sent is not the answer
                self.sidecar.awaiting_answer.pop(self, None)
                self.sidecar.spawn(self.exchange, self._connect())
            else:
                said = " without answering" if self.state == "head" else ""
                message = f"The app on port {self.route.port} closed the connection{said}."
                if not self.route.tls and not self.app.reused:  # what an app serving HTTPS does to plain HTTP
                    message += f" If it serves HTTPS, this port is set up for plain HTTP: {TO_HTTPS}."
                self.fail(HTTPError(502, message))
        elif self.state in ("body", "websocket"):
            self._abort()

    def _may_retry(self) -> bool:
        ex = self.exchange
        return self.app.reused and not self.retried and ex.body.kind == "none" and ex.method in SAFE_METHODS

    # ---- a websocket -------------------------------------------------------------------------
    def _upgrade(self, response, rest: bytes) -> None:
        """The app accepted the websocket: its 101 through the same filter as any answer,
        then frames both ways until either side closes."""
        headers = [*response_headers(response, self.exchange.own), ("Connection", "Upgrade"), ("Upgrade", "websocket")]
        self.state = "websocket"
        self.client.write(render_head(f"HTTP/1.1 101 {response.start.reason}", headers) + rest)
        self.to_client += len(rest)
        self.sidecar.in_use(self.route)
        self._keep_open()
        self.client.source = self.app.transport
        if self.client.writes_paused:  # the client is not reading what it was sent so far
            self.app.transport.pause_reading()
        self.client.receiver = self._ws_from_client
        early = self.client.take_buffer()
        if early:
            self._ws_from_client(early)

    def _ws_from_client(self, data: bytes) -> None:
        self.to_app += len(data)
        self.sidecar.in_use(self.route)
        self.app.transport.write(data)

    def close(self) -> None:
        """End a websocket or an answer still streaming (its route changed, its token
        expired, its login no longer gets in)."""
        self.client.close()

    # ---- endings -----------------------------------------------------------------------------
    def fail(self, error: HTTPError) -> None:
        """An error before any of the answer was sent: the client gets it, the app's
        connection is closed."""
        self._stop()
        self.exchange.fail(error, self.sidecar.hub_page)

    def _abort(self) -> None:
        self._stop()
        self.client.close()
        self.exchange.end(False)

    def client_gone(self) -> None:
        """The client closed its connection."""
        if self.state == "done":
            return
        answering = self.state in ("body", "websocket")  # the app's answer had begun: forwarded
        self._stop()
        if answering:
            self.exchange.end(False)
        else:
            self.exchange.abort()

    def _stop(self) -> None:
        if self.state == "websocket":
            self.sidecar.metrics.body(self.route.entry, "to_app", self.to_app)
            self.sidecar.metrics.body(self.route.entry, "to_client", self.to_client)
        self._closed()
        self.state = "done"
        self.sidecar.awaiting_answer.pop(self, None)
        if self.app is not None:
            self.app.close()
            self.app = None


def server_words(route) -> str:
    """Whose server a route leads to, in words: ``alice's server``, ``alice's server dev``."""
    if not route.owner:
        return "its server"
    return f"{route.owner}'s server" + (f" {route.servername}" if route.servername else "")
