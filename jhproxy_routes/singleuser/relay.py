"""The loopback relay: an allowed port whose app listens on 127.0.0.1 (or ::1) only is made
reachable at the server's own addresses, where the proxy connects.

For each such port the relay listens on each own address at the same port (a specific
address: a listener on 127.0.0.1:P does not stop it, one on 0.0.0.0:P does, and then needs
no relay) and passes each connection's bytes both ways to the loopback listener, half-closes
included. The bytes are not read: the route's checks happen before, in the proxy and the
sidecar.

The bytes move with ``splice(2)``, from one socket through a pipe into the other, inside the
kernel. One thread runs every relayed connection (``epoll``): it holds Python's lock only
between system calls, and under load one wake-up serves many connections, so neither a large
transfer nor the Jupyter server's own work delays the other. A side whose reader is slow
stops the reading of the other (what is in the pipe waits for the socket to drain).

A relayed connection costs the Jupyter server's process six descriptors, so at most
:func:`max_connections` are relayed at a time (beyond, a visitor's connection is closed at
once): visitors holding connections open never leave the Jupyter server without descriptors
(its kernels, files and own connections need them). A failed ``accept()`` (out of
descriptors, an aborted connection) is tried again after ``ACCEPT_RETRY``, never the end of
the port's relay.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import resource
import select
import socket
import threading
import time

log = logging.getLogger("jhproxy_routes.singleuser")

CHUNK = 1 << 20  # bytes moved by one splice at most
F_SETPIPE_SZ = 1031
RETRY_AFTER = 15.0  # seconds before listening is tried again on a port where it failed
NONBLOCK = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
MOST_CONNECTIONS = 512  # relayed connections at a time, at most (fewer where descriptors are few)
ACCEPT_RETRY = 0.1  # seconds before a failed accept() is tried again
GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.ECONNREFUSED, errno.EHOSTUNREACH)


def max_connections() -> int:
    """How many connections the relay moves at a time: a quarter of the process's
    descriptors at most (six each), and never more than ``MOST_CONNECTIONS``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MOST_CONNECTIONS
    return max(1, min(MOST_CONNECTIONS, soft // 24))


class EventLoop(threading.Thread):
    """The relay's thread: ``epoll`` over its listeners and connections, each fd with a
    handler called with its events. ``watch``/``forget`` may be called from any thread."""

    def __init__(self):
        super().__init__(name="jhproxy-routes-relay", daemon=True)
        self.epoll = select.epoll()
        self.handlers: dict[int, object] = {}
        self.timers: list[tuple[float, object]] = []  # (when, call): the loop's own thread only
        self.connections = 0  # relayed now (max_connections() at most)

    def watch(self, fd: int, events: int, handler) -> None:
        self.handlers[fd] = handler
        self.epoll.register(fd, events)

    def change(self, fd: int, events: int) -> None:
        self.epoll.modify(fd, events)

    def forget(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(fd)

    def later(self, delay: float, call) -> None:
        """``call()`` on the loop's thread after ``delay`` seconds (from the loop's thread)."""
        self.timers.append((time.monotonic() + delay, call))

    def run(self) -> None:
        while True:
            now = time.monotonic()
            for due in [t for t in self.timers if t[0] <= now]:
                self.timers.remove(due)
                with contextlib.suppress(OSError, ValueError):  # a listener closed meanwhile
                    due[1]()
            timeout = min((t[0] for t in self.timers), default=now - 1) - now
            for fd, events in self.epoll.poll(timeout if self.timers else -1):
                handler = self.handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler(fd, events)
                except Exception:  # one connection's failure is never the loop's end
                    log.exception("jhproxy-routes: relay")


class Flow:
    """One direction of a connection: ``source`` -> pipe -> ``sink``."""

    def __init__(self, source: socket.socket, sink: socket.socket):
        self.source, self.sink = source, sink
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a larger pipe: fewer calls for large bodies
            fcntl.fcntl(self.write_end, F_SETPIPE_SZ, CHUNK)
        self.pending = 0  # bytes in the pipe, not yet in the sink
        self.ended = False  # the source ended (EOF)
        self.done = False  # ended, and all of it passed on (the sink's writing side shut)

    def pump(self) -> None:
        """Move what the sink takes of what is in the pipe, then one read of the source and
        what the sink takes of it (epoll is level-triggered: a source with more to read
        wakes the loop again). Raises OSError where either side fails."""
        if self.done or (self.pending and not self.drain()):
            return  # the sink is full: wait until it may be written
        if not self.ended:
            try:
                moved = os.splice(self.source.fileno(), self.write_end, CHUNK, flags=NONBLOCK)
            except BlockingIOError:
                return  # nothing to read now
            self.ended = moved == 0
            self.pending += moved
            if self.pending and not self.drain():
                return
        if self.ended:
            with contextlib.suppress(OSError):
                self.sink.shutdown(socket.SHUT_WR)
            self.done = True

    def drain(self) -> bool:
        """Empty the pipe into the sink as far as it takes: whether it is empty."""
        while self.pending:
            try:
                self.pending -= os.splice(self.read_end, self.sink.fileno(), self.pending, flags=NONBLOCK)
            except BlockingIOError:
                return False
        return True

    @property
    def wants_read(self) -> bool:
        return not self.ended and not self.pending

    @property
    def wants_write(self) -> bool:
        return self.pending > 0

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


class Connection:
    """A relayed connection: the visitor's socket, the app's, and a flow each way."""

    def __init__(self, loop: EventLoop, visitor: socket.socket, target: tuple[str, int]):
        self.loop, self.visitor, self.target = loop, visitor, target
        loop.connections += 1
        self.app = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_STREAM)
        self.app.setblocking(False)
        self.flows: tuple[Flow, Flow] | None = None
        self.closed = False
        for sock in (visitor, self.app):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = self.app.connect_ex(target)
        if error not in (0, errno.EINPROGRESS):
            self.fail(OSError(error, os.strerror(error)))
            return
        loop.watch(self.app.fileno(), select.EPOLLOUT, self.connected)

    def connected(self, fd: int, events: int) -> None:
        error = self.app.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.fail(OSError(error, os.strerror(error)))
            return
        self.loop.forget(self.app.fileno())
        self.flows = (Flow(self.visitor, self.app), Flow(self.app, self.visitor))
        self.masks = {sock.fileno(): select.EPOLLIN for sock in (self.visitor, self.app)}  # what epoll watches now
        self.loop.watch(self.visitor.fileno(), select.EPOLLIN, self.ready)
        self.loop.watch(self.app.fileno(), select.EPOLLIN, self.ready)

    def ready(self, fd: int, events: int) -> None:
        readable = events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR)
        writable = events & (select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR)
        try:
            for flow in self.flows:  # the flow this socket feeds, and the one it drains
                if (readable and flow.source.fileno() == fd) or (writable and flow.sink.fileno() == fd):
                    flow.pump()
        except OSError as e:
            self.fail(e)
            return
        if all(flow.done for flow in self.flows):
            self.close()
            return
        for sock in (self.visitor, self.app):  # what each socket waits for now
            wanted, finished = 0, True
            for flow in self.flows:
                if flow.source is sock:
                    wanted |= select.EPOLLIN if flow.wants_read else 0
                    finished &= flow.ended
                if flow.sink is sock:
                    wanted |= select.EPOLLOUT if flow.wants_write else 0
                    finished &= flow.done
            fileno = sock.fileno()
            if finished:  # nothing more to read or write there: its hang-up must not wake the loop
                self.loop.forget(fileno)
            elif fileno in self.loop.handlers and self.masks.get(fileno) != wanted:
                self.loop.change(fileno, wanted)
                self.masks[fileno] = wanted

    def fail(self, error: OSError) -> None:
        if error.errno not in GONE:
            log.info("jhproxy-routes: relayed connection to %s:%s ended: %s", *self.target, error)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.connections -= 1
        for sock in (self.visitor, self.app):
            self.loop.forget(sock.fileno())
            sock.close()
        for flow in self.flows or ():
            flow.close()


class Listener:
    """The relay of one port on one address."""

    def __init__(self, loop: EventLoop, address: str, port: int, target: tuple[str, int]):
        self.loop, self.target = loop, target
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((address, port))
            self.socket.listen(128)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.inode = os.fstat(self.socket.fileno()).st_ino
        self.closed = self.full = self.failing = False  # full, failing: logged once, until it passes
        loop.watch(self.socket.fileno(), select.EPOLLIN, self.accept)

    def accept(self, fd: int, events: int) -> None:
        while True:
            try:
                visitor, _ = self.socket.accept()
            except BlockingIOError:
                self.failing = False
                return
            except OSError as e:  # out of descriptors, say: tried again soon, not the end
                if not self.failing:
                    log.warning("jhproxy-routes: the relay of port %s could not accept: %s", self.target[1], e)
                self.failing = True
                self.loop.forget(self.socket.fileno())
                self.loop.later(ACCEPT_RETRY, self.resume)
                return
            if self.loop.connections >= max_connections():
                visitor.close()
                if not self.full:
                    log.warning("jhproxy-routes: the relay is full (%s connections): closing new ones", max_connections())
                self.full = True
                continue
            self.full = False
            visitor.setblocking(False)
            Connection(self.loop, visitor, self.target)

    def resume(self) -> None:
        if not self.closed:
            self.loop.watch(self.socket.fileno(), select.EPOLLIN, self.accept)

    def close(self) -> None:
        self.closed = True
        self.loop.forget(self.socket.fileno())
        self.socket.close()


class LoopbackRelay:
    """The relayed ports: ``want()`` says which, and answers which are relayed now."""

    def __init__(self):
        self._loop = EventLoop()
        self._loop.start()
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
                listeners.append(Listener(self._loop, address, port, (host, port)))
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
