"""A client's connection to the sidecar (CHP's, reused across its clients): request heads
read as they arrive, one ``Exchange`` at a time handed to the sidecar, and the bytes that
follow a head (a request body, a websocket's frames) handed to whoever takes them.

The check is made for every request, never per connection. Slowloris: a head once begun
must be complete within ``client_timeout`` (to the sidecar's next tick), else 408 and the
connection closes. An idle keep-alive connection (nothing begun) is closed after
``client_idle_timeout``: CHP keeps its connections to the sidecar as long as they work and
does not retry a request on one closed under it, so this is minutes, far longer than CHP
leaves one unused while it has requests to send. When ``max_idle_connections`` wait for a
request, a new connection closes the one that has waited longest.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..http1 import MAX_HEAD, HTTPError, parse_request_head
from .access import wants_html
from .exchange import Exchange, error_response
from .relay import WRITE_BUFFER_HIGH

log = logging.getLogger("jhproxy_routes.sidecar")

MAX_WAITING = 2 * MAX_HEAD  # bytes kept of a client's next requests while one is answered


class ClientConnection(asyncio.Protocol):
    """``receiver``: while a request body or a websocket streams, called with every piece
    that arrives (else pieces wait in ``buffer``). ``source``: the transport whose reading
    pauses while writes to this client back up (the app's, while its answer streams)."""

    def __init__(self, sidecar):
        self.sidecar = sidecar
        self.transport = None
        self.peer = ""
        self.buffer = bytearray()
        self.exchange: Exchange | None = None
        self.receiver = None
        self.source = None
        self.waiting_since: float | None = None  # loop time since when a head is awaited
        self.head_seen: float | None = None  # the tick that first saw part of that head
        self.first = True  # no request yet
        self.eof = False
        self.closed = False
        self.writes_paused = False
        self._reading_heads = False
        self._pauses: set[str] = set()
        self._body_wait = None  # read_body's future while it waits for the rest of a body

    # ---- asyncio's calls -----------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.peer = (transport.get_extra_info("peername") or ("",))[0]
        if len(self.sidecar.idle_clients) >= self.sidecar.max_idle_connections:
            close_longest_idle(self.sidecar.idle_clients)
        self.next_request()

    def data_received(self, data: bytes) -> None:
        if self.receiver is not None:
            self.receiver(data)
            return
        self.buffer += data
        if len(self.buffer) > MAX_WAITING:
            self.pause_reading("waiting")
        self.next_request()

    def eof_received(self) -> bool:
        self.eof = True
        if self.receiver is not None or self.exchange is None:
            self.close()  # a body or websocket cut short, or no request begun
        return True  # else keep the connection open for the answer

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._stop_waiting()
        if self._body_wait is not None and not self._body_wait.done():
            self._body_wait.set_exception(ConnectionResetError("the client closed the connection"))
        if self.exchange is not None:
            self.sidecar.client_gone(self.exchange)

    def pause_writing(self) -> None:
        self.writes_paused = True
        if self.source is not None:
            self.source.pause_reading()

    def resume_writing(self) -> None:
        self.writes_paused = False
        if self.source is not None:
            self.source.resume_reading()
        self.next_request()  # requests that waited for the client to read its answers

    # ---- requests --------------------------------------------------------------------------
    def next_request(self) -> None:
        """Read and hand on every whole request head in the buffer, one exchange at a time
        (a loop, not recursion: answers of the sidecar's own end at once), while the client
        reads its answers (none is begun while writes to it are paused)."""
        if self._reading_heads:
            return
        self._reading_heads = True
        try:
            while self.exchange is None and not self.writes_paused and not self.closed and not self.transport.is_closing():
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0 or end > MAX_HEAD:
                    if end > MAX_HEAD or len(self.buffer) > MAX_HEAD:
                        self.write(error_response(HTTPError(431, "Request head too large.")))
                        self.close()
                    elif self.eof:
                        self.close()
                    else:
                        self._wait_for_head()
                    return
                self._stop_waiting()
                raw = bytes(self.buffer[: end + 4])
                del self.buffer[: end + 4]
                self.first = False
                head = None
                try:
                    head = parse_request_head(raw)
                    self.exchange = Exchange(self, head, self.peer)
                except HTTPError as e:
                    self.write(error_response(e, self.sidecar.hub_page if head and wants_html(head) else None))
                    self.close()
                    return
                self.sidecar.dispatch(self.exchange)
        finally:
            self._reading_heads = False
            if len(self.buffer) <= MAX_WAITING:
                self.resume_reading("waiting")

    def exchange_ended(self, exchange: Exchange, keep_alive: bool) -> None:
        if exchange is not self.exchange:
            return
        self.exchange = None
        self.receiver = self.source = None
        if not keep_alive:
            self.close()
            return
        self.resume_reading("app")  # the app's connection may have been released while paused
        self.next_request()

    def _wait_for_head(self) -> None:
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
            self.head_seen = None
            self.sidecar.idle_clients[self] = None

    def _stop_waiting(self) -> None:
        if self.waiting_since is not None:
            self.waiting_since = None
            del self.sidecar.idle_clients[self]

    def check_deadline(self, now: float) -> None:
        """At each of the sidecar's ticks while a head is awaited: 408 for a head begun over
        ``client_timeout`` ago, and an idle connection closed after ``client_idle_timeout``."""
        if self.transport.is_closing():
            return
        if self.buffer:
            if self.head_seen is None:
                self.head_seen = now
            elif now - self.head_seen >= self.sidecar.client_timeout:
                self.write(error_response(HTTPError(408, "The request head did not arrive in time.")))
                self.close()
        elif self.sidecar.client_idle_timeout and now - self.waiting_since >= self.sidecar.client_idle_timeout:
            self.close()  # idle too long: closed without a word, as keep-alive allows

    # ---- what the sidecar does with it -----------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self, reason: str) -> None:
        """Stop reading from the client for ``reason`` (the app's writes back up; too much
        waiting): reading resumes once no reason is left."""
        if not self._pauses:
            self.transport.pause_reading()
        self._pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self._pauses:
            self._pauses.discard(reason)
            if not self._pauses:
                self.transport.resume_reading()

    def take_buffer(self) -> bytes:
        """What has arrived after the head (the start of a body, a websocket's first frames)."""
        data = bytes(self.buffer)
        self.buffer.clear()
        self.resume_reading("waiting")
        return data

    def give_back(self, data: bytes) -> None:
        """Bytes that follow the request's body: the next request's."""
        if data:
            self.buffer[:0] = data

    async def read_body(self, length: int) -> bytes:
        """The whole request body of ``length`` bytes (small ones: the hub's API calls),
        within ``client_timeout`` (else 408); ConnectionError if the client goes away."""
        if len(self.buffer) < length:
            whole = self._body_wait = asyncio.get_running_loop().create_future()

            def collect(data: bytes) -> None:
                self.buffer += data
                if len(self.buffer) >= length and not whole.done():
                    self.receiver = None
                    whole.set_result(None)

            self.receiver = collect
            self.resume_reading("waiting")
            try:
                await asyncio.wait_for(whole, self.sidecar.client_timeout)
            except asyncio.TimeoutError:
                raise HTTPError(408, "The request body did not arrive in time.") from None
            finally:
                self.receiver = self._body_wait = None
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return body


def close_longest_idle(idle_clients: dict) -> None:
    """Make room for a new connection: close the one that has waited longest for a request
    (none begun on it), one that never sent any first (CHP's always have)."""
    for never_used in (True, False):
        for client in idle_clients:
            if (client.first or not never_used) and not client.buffer and not client.transport.is_closing():
                client.close()
                return
