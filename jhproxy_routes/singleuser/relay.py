"""The loopback relay: an allowed port whose app listens on 127.0.0.1 (or ::1) only is made
reachable at the server's own addresses, where the proxy connects.

For each such port the relay listens on each own address at the same port (a specific
address: a listener on 127.0.0.1:P does not stop it, one on 0.0.0.0:P does, and then needs
no relay) and pipes each connection's bytes both ways to the loopback listener, with the
transports' flow control (a slow reader pauses the other side) and half-closes passed on.
The bytes are not read: the route's checks happen before, in the proxy and the sidecar.

It runs on an event loop of its own, in a thread, so that a large transfer never delays
the Jupyter server, and the server's work never delays a transfer. :class:`LoopbackRelay`
is called from the server's loop: ``want()`` says which ports to relay, and answers which
are relayed now.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

log = logging.getLogger("jhproxy_routes.singleuser")

READ_LIMIT = 1 << 20  # bytes written but not yet sent before the other side is paused
RETRY_AFTER = 15.0  # seconds before listening is tried again on a port where it failed


class Pipe(asyncio.Protocol):
    """One side of a relayed connection; ``peer`` is the other side."""

    def __init__(self, peer: Pipe | None = None):
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self.ended = False  # this side sent its EOF

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(READ_LIMIT)

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        if self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        if self.peer.ended:
            self.close_both()
        return True  # keep the other direction open

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()

    def close_both(self) -> None:
        self.transport.close()
        self.peer.transport.close()


class Visitor(Pipe):
    """The side the proxy connected; it reads nothing until the app's side is connected."""

    def __init__(self, target: tuple[str, int]):
        super().__init__()
        self.target = target

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, app = await loop.create_connection(lambda: Pipe(peer=self), *self.target)
        except OSError as e:
            log.info("jhproxy-routes: relay to %s:%s failed: %s", *self.target, e)
            self.transport.close()
            return
        if self.transport.is_closing():  # the visitor left meanwhile
            app.transport.close()
            return
        self.peer = app
        self.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        if self.peer is not None:
            self.peer.transport.close()


class LoopbackRelay:
    """The relayed ports, on a loop of their own: ``{port: (target host, [servers])}``."""

    def __init__(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="jhproxy-routes-relay", daemon=True)
        self._thread.start()
        self._relays: dict[int, tuple[str, list[asyncio.Server]]] = {}  # touched on the relay's loop only
        self._failed: dict[int, float] = {}  # port: when listening there failed (logged)
        self.socket_inodes: frozenset[int] = frozenset()  # the relay's listening sockets, for the scan to skip

    async def want(self, ports: dict[int, str], addresses: list[str]) -> set[int]:
        """Relay exactly ``ports`` ({port: loopback address of its app}) from ``addresses``;
        answers the ports relayed now."""
        future = asyncio.run_coroutine_threadsafe(self._want(ports, addresses), self._loop)
        return await asyncio.wrap_future(future)

    async def _want(self, ports: dict[int, str], addresses: list[str]) -> set[int]:
        for port in list(self._relays):
            if ports.get(port) != self._relays[port][0]:
                await self._stop(port)
        for port, when in list(self._failed.items()):
            if port not in ports or time.monotonic() - when > RETRY_AFTER:
                del self._failed[port]
        for port, host in ports.items():
            if port not in self._relays and port not in self._failed:
                await self._start(port, host, addresses)
        self.socket_inodes = frozenset(
            os.fstat(sock.fileno()).st_ino
            for _, servers in self._relays.values()
            for server in servers
            for sock in server.sockets
        )
        return set(self._relays)

    async def _start(self, port: int, host: str, addresses: list[str]) -> None:
        servers = []
        for address in addresses:
            try:
                servers.append(await self._loop.create_server(lambda: Visitor((host, port)), address, port))
            except OSError as e:
                log.warning("jhproxy-routes: cannot relay %s:%s to the app on %s: %s", address, port, host, e.strerror or e)
                self._failed[port] = time.monotonic()
        if servers:
            self._relays[port] = (host, servers)
            log.info("jhproxy-routes: relaying %s to the app on %s:%s", ", ".join(addresses), host, port)

    async def _stop(self, port: int) -> None:
        _, servers = self._relays.pop(port)
        for server in servers:
            server.close()
        log.info("jhproxy-routes: stopped relaying port %s", port)

    async def close(self) -> None:
        await self.want({}, [])
        self._loop.call_soon_threadsafe(self._loop.stop)
