"""The loopback relay: an allowed port whose app listens on 127.0.0.1 (or ::1) only is made
reachable at the server's own addresses, where the proxy connects.

For each such port the relay listens on each own address at the same port (a specific
address: a listener on 127.0.0.1:P does not stop it, one on 0.0.0.0:P does, and then needs
no relay) and passes each connection's bytes both ways to the loopback listener, half-closes
included. The bytes are not read: the route's checks happen before, in the proxy and the
sidecar.

The bytes move with ``splice(2)``, from one socket through a pipe into the other, inside
the kernel, in two threads per connection (one each way) that hold Python's lock only
between system calls: neither a large transfer nor the Jupyter server's own work delays the
other. A thread per listening socket accepts.

A relayed connection costs the Jupyter server's process six descriptors and two threads, so
at most :func:`max_connections` are relayed at a time (beyond, a visitor's connection is
closed at once): visitors holding connections open never leave the Jupyter server without
descriptors (its kernels, files and own connections need them). A failed ``accept()`` (out
of descriptors, an aborted connection) is tried again, never the end of the port's relay.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import resource
import socket
import threading
import time

log = logging.getLogger("jhproxy_routes.singleuser")

CHUNK = 1 << 20  # bytes moved by one splice at most
F_SETPIPE_SZ = 1031
RETRY_AFTER = 15.0  # seconds before listening is tried again on a port where it failed
CONNECT_TIMEOUT = 10.0
MOST_CONNECTIONS = 512  # relayed connections at a time, at most (fewer where descriptors are few)
ACCEPT_RETRY = 0.1  # seconds before a failed accept() is tried again


def max_connections() -> int:
    """How many connections the relay moves at a time: a quarter of the process's
    descriptors at most (six each), and never more than ``MOST_CONNECTIONS``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MOST_CONNECTIONS
    return max(1, min(MOST_CONNECTIONS, soft // 24))


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Move bytes from ``source`` to ``sink`` until ``source`` ends; then end ``sink``'s
    writing side (a half-close, passed on). Raises OSError where either side fails."""
    read_end, write_end = os.pipe()
    try:
        with contextlib.suppress(OSError):  # a larger pipe: fewer calls for large bodies
            fcntl.fcntl(write_end, F_SETPIPE_SZ, CHUNK)
        while moved := os.splice(source.fileno(), write_end, CHUNK):
            while moved:
                moved -= os.splice(read_end, sink.fileno(), moved)
        sink.shutdown(socket.SHUT_WR)
    finally:
        os.close(read_end)
        os.close(write_end)


def relay_connection(visitor: socket.socket, target: tuple[str, int], slots: threading.BoundedSemaphore) -> None:
    """One relayed connection: the app's side is opened, then bytes flow both ways; its slot
    is given back at the end."""
    try:
        _relay(visitor, target)
    finally:
        slots.release()


def _relay(visitor: socket.socket, target: tuple[str, int]) -> None:
    try:
        app = socket.create_connection(target, timeout=CONNECT_TIMEOUT)
    except OSError as e:
        log.info("jhproxy-routes: relay to %s:%s failed: %s", *target, e)
        visitor.close()
        return
    app.settimeout(None)
    for sock in (visitor, app):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump_quietly, args=(app, visitor), daemon=True)
    try:
        back.start()
    except RuntimeError:  # no thread to be had
        visitor.close()
        app.close()
        return
    _pump_quietly(visitor, app)
    back.join()
    visitor.close()
    app.close()


def _pump_quietly(source: socket.socket, sink: socket.socket) -> None:
    try:
        pump(source, sink)
    except OSError as e:  # a reset, or the other way failed: end both
        if e.errno not in (errno.ECONNRESET, errno.EPIPE, errno.EBADF, errno.ENOTCONN):
            log.info("jhproxy-routes: relayed connection ended: %s", e)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Listener:
    """The relay of one port on one address, accepting in a thread of its own."""

    def __init__(self, address: str, port: int, target: tuple[str, int], slots: threading.BoundedSemaphore):
        self.target = target
        self.slots = slots
        self.closed = False
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((address, port))
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.inode = os.fstat(self.socket.fileno()).st_ino
        threading.Thread(target=self._accept, name=f"jhproxy-routes-relay-{port}", daemon=True).start()

    def _accept(self) -> None:
        full = failing = False  # each logged once, until it passes
        while not self.closed:
            try:
                visitor, _ = self.socket.accept()
            except OSError as e:
                if self.closed:  # the relay of this port stopped
                    return
                if not failing:
                    log.warning("jhproxy-routes: the relay of port %s could not accept: %s", self.target[1], e)
                failing = True
                time.sleep(ACCEPT_RETRY)  # out of descriptors, say: another try, not the end
                continue
            failing = False
            if not self.slots.acquire(blocking=False):
                visitor.close()
                if not full:
                    log.warning("jhproxy-routes: the relay is full (%s connections): closing new ones", max_connections())
                full = True
                continue
            full = False
            try:
                threading.Thread(target=relay_connection, args=(visitor, self.target, self.slots), daemon=True).start()
            except RuntimeError:  # no thread to be had
                self.slots.release()
                visitor.close()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept()
        self.socket.close()


class LoopbackRelay:
    """The relayed ports: ``want()`` says which, and answers which are relayed now."""

    def __init__(self):
        self._slots = threading.BoundedSemaphore(max_connections())  # shared by all its ports
        self._relays: dict[int, tuple[str, list[Listener]]] = {}  # port: (app's address, listeners)
        self._failed: dict[int, float] = {}  # port: when listening there failed (logged)

    @property
    def socket_inodes(self) -> frozenset[int]:
        """The relay's listening sockets, for the scan to skip."""
        return frozenset(listener.inode for _, listeners in self._relays.values() for listener in listeners)

    async def want(self, ports: dict[int, str], addresses: list[str]) -> set[int]:
        """Relay exactly ``ports`` ({port: loopback address of its app}) from ``addresses``."""
        for port in list(self._relays):
            if ports.get(port) != self._relays[port][0]:
                self._stop(port)
        for port, when in list(self._failed.items()):
            if port not in ports or time.monotonic() - when > RETRY_AFTER:
                del self._failed[port]
        for port, host in ports.items():
            if port not in self._relays and port not in self._failed:
                self._start(port, host, addresses)
        return set(self._relays)

    def _start(self, port: int, host: str, addresses: list[str]) -> None:
        listeners = []
        for address in addresses:
            try:
                listeners.append(Listener(address, port, (host, port), self._slots))
            except OSError as e:
                log.warning("jhproxy-routes: cannot relay %s:%s to the app on %s: %s", address, port, host, e.strerror or e)
                self._failed[port] = time.monotonic()
        if listeners:
            self._relays[port] = (host, listeners)
            log.info("jhproxy-routes: relaying %s to the app on %s:%s", ", ".join(addresses), host, port)

    def _stop(self, port: int) -> None:
        _, listeners = self._relays.pop(port)
        for listener in listeners:
            listener.close()
        log.info("jhproxy-routes: stopped relaying port %s", port)

    async def close(self) -> None:
        await self.want({}, [])
