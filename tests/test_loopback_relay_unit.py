"""The loopback relay on its own (``jhproxy_routes.singleuser.relay``), with real sockets on
this machine: an app on 127.0.0.1, the relay on the machine's own address."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from jhproxy_routes.interfaces import own_addresses
from jhproxy_routes.singleuser.relay import LoopbackRelay
from tests.rig import free_port

pytestmark = pytest.mark.unit


@pytest.fixture
def own():
    addresses = [a for a in own_addresses() if ":" not in a]
    if not addresses:
        pytest.fail("this machine has no IPv4 address but loopback: the relay has nowhere to listen", pytrace=False)
    return addresses[0]


def loopback_app(port: int, handle) -> socket.socket:
    """A listener on 127.0.0.1:port that runs ``handle(conn)`` for each connection."""
    server = socket.create_server(("127.0.0.1", port))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server


def close(server: socket.socket) -> None:
    server.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept(), which holds the socket
    server.close()


def digest_after_eof(conn: socket.socket) -> None:
    """Reads until the client's half-close, then answers the SHA-256 of all it read and 4 MiB."""
    sha = hashlib.sha256()
    while data := conn.recv(1 << 16):
        sha.update(data)
    conn.sendall(sha.hexdigest().encode() + b"\n" + b"y" * (4 << 20))
    conn.close()


async def test_bytes_both_ways_with_half_close(own):
    port = free_port()
    app = loopback_app(port, digest_after_eof)
    relay = LoopbackRelay()
    try:
        assert await relay.want({port: "127.0.0.1"}, [own]) == {port}
        body = os.urandom(8 << 20)
        with socket.create_connection((own, port), timeout=10) as client:
            client.sendall(body)
            client.shutdown(socket.SHUT_WR)  # the app answers only after our EOF
            answer = b""
            while data := client.recv(1 << 16):
                answer += data
        digest, rest = answer.split(b"\n", 1)
        assert digest.decode() == hashlib.sha256(body).hexdigest() and rest == b"y" * (4 << 20)
    finally:
        await relay.close()
        close(app)


async def test_stopped_the_port_is_free_again(own):
    port = free_port()
    app = loopback_app(port, lambda conn: conn.close())
    relay = LoopbackRelay()
    assert await relay.want({port: "127.0.0.1"}, [own]) == {port}
    assert relay.socket_inodes
    assert await relay.want({}, [own]) == set()
    assert not relay.socket_inodes
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((own, port), timeout=5)
    close(app)
    # an app on all interfaces can take the port now
    socket.create_server(("0.0.0.0", port)).close()


async def test_nothing_on_loopback_closes_the_visitor(own):
    port = free_port()
    relay = LoopbackRelay()
    try:
        assert await relay.want({port: "127.0.0.1"}, [own]) == {port}
        with socket.create_connection((own, port), timeout=10) as client:
            client.settimeout(10)
            assert client.recv(10) == b""  # closed at once, nothing sent
    finally:
        await relay.close()


async def test_an_address_taken_is_reported_not_relayed(own):
    port = free_port()
    taken = socket.create_server(("0.0.0.0", port))  # an app on all interfaces: no relay needed
    relay = LoopbackRelay()
    try:
        assert await relay.want({port: "127.0.0.1"}, [own]) == set()
    finally:
        await relay.close()
        taken.close()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(1 << 16):
        conn.sendall(data)
    conn.close()


async def test_many_connections_at_once_then_quiet(own):
    """50 connections of 200 round trips of 1 KiB each, every byte back in order; then, all
    closed (some by the visitor, half-way), the relay uses no CPU while nothing happens."""
    port = free_port()
    app = loopback_app(port, echo)
    relay = LoopbackRelay()
    try:
        assert await relay.want({port: "127.0.0.1"}, [own]) == {port}
        failures = []

        def client(n):
            try:
                with socket.create_connection((own, port), timeout=20) as sock:
                    for i in range(200):
                        message = os.urandom(1024)
                        sock.sendall(message)
                        got = b""
                        while len(got) < len(message):
                            got += sock.recv(len(message) - len(got))
                        assert got == message, (n, i)
                    if n % 2:
                        sock.shutdown(socket.SHUT_WR)  # a half-close first: the app's EOF
                        assert sock.recv(10) == b""
            except Exception as e:
                failures.append(repr(e))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures, failures[:3]
        time.sleep(0.5)
        before = time.process_time()
        time.sleep(1.5)
        assert time.process_time() - before < 0.1  # no loop woken by a closed socket
    finally:
        await relay.close()
        close(app)


def held_open(conn: socket.socket) -> None:
    """Says hello, then holds the connection until the client closes it."""
    conn.sendall(b"hello")
    while conn.recv(1 << 16):
        pass
    conn.close()


async def test_at_most_so_many_connections_at_a_time(own, monkeypatch):
    """Visitors who hold connections open get no more than the relay's share of the Jupyter
    server's descriptors: beyond it, a new connection is closed at once; once one ends, the
    next is relayed again."""
    from jhproxy_routes.singleuser import relay as module

    monkeypatch.setattr(module, "max_connections", lambda: 3)
    port = free_port()
    app = loopback_app(port, held_open)
    relay = LoopbackRelay()
    try:
        assert await relay.want({port: "127.0.0.1"}, [own]) == {port}
        held = [socket.create_connection((own, port), timeout=10) for _ in range(3)]
        assert all(conn.recv(5) == b"hello" for conn in held)
        with socket.create_connection((own, port), timeout=10) as refused:
            assert refused.recv(5) == b""  # closed at once: the relay is full
        held.pop().close()

        def relayed() -> bool:
            with socket.create_connection((own, port), timeout=10) as conn:
                return conn.recv(5) == b"hello"

        assert any(relayed() for _ in range(50))  # the slot is given back as the connection ends
    finally:
        for conn in held:
            conn.close()
        await relay.close()
        close(app)


OUT_OF_DESCRIPTORS = """
import asyncio, errno, socket, sys, threading, time
from jhproxy_routes.singleuser.relay import LoopbackRelay
own, port = sys.argv[1], int(sys.argv[2])
app = socket.create_server(("127.0.0.1", port))

def serve():
    while True:
        conn, _ = app.accept()
        conn.sendall(b"hello")
        conn.close()

threading.Thread(target=serve, daemon=True).start()
accept, failed = socket.socket.accept, []

def out_of_descriptors_once(sock):
    # the relay's next accept() fails as it does when the process has no descriptor left
    if sock.getsockname()[0] == own and not failed:
        failed.append(1)
        raise OSError(errno.EMFILE, "Too many open files")
    return accept(sock)

async def main():
    relay = LoopbackRelay()
    assert await relay.want({port: "127.0.0.1"}, [own]) == {port}
    socket.socket.accept = out_of_descriptors_once  # the accept() already waiting is not affected
    print("ready", flush=True)
    time.sleep(10)

asyncio.run(main())
"""


def test_out_of_descriptors_the_relay_goes_on(own):
    """A failed accept() (no descriptor left, as visitors holding connections open can bring
    about) is not the end of the port's relay: the next visitor is relayed."""
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", OUT_OF_DESCRIPTORS, own, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(2):  # the first is taken by the accept() that waited; then one fails
            with socket.create_connection((own, port), timeout=10) as visitor:
                visitor.settimeout(10)
                assert visitor.recv(5) == b"hello"
    finally:
        proc.kill()
        proc.wait(10)
