"""The loopback relay on its own (``jhproxy_routes.singleuser.relay``), with real sockets on
this machine: an app on 127.0.0.1, the relay on the machine's own address."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

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
