"""The relay from the attacker's side: what a client (or an app) sends to desynchronise a
connection, get past the check, keep the sidecar's memory or its deadlines, and what must
not happen. A real sidecar on a real port, raw apps and raw client sockets.
"""

import asyncio
import gc
import socket

import pytest

from jhproxy_routes.sidecar.connection import ClientConnection
from jhproxy_routes.sidecar.server import Sidecar, serve
from tests.test_sidecar_protocol import TOKEN, RawApp, exchange, ok_reply, route_to

MiB = 1024 * 1024


@pytest.fixture
async def sidecar():
    sidecar = Sidecar("api-secret", upstream_timeout=5, client_timeout=1)
    server = await serve(sidecar, "127.0.0.1", 0)
    sidecar.port = server.sockets[0].getsockname()[1]
    yield sidecar
    server.close()
    sidecar.pool.close_all()


def live_client_connections() -> list:
    gc.collect()
    return [c for c in gc.get_objects() if isinstance(c, ClientConnection) and not c.closed]


async def small_window_socket(sidecar) -> socket.socket:
    """A client socket that reads nothing and has a small receive buffer."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", sidecar.port))
    return s


async def send_for(s: socket.socket, data: bytes, seconds: float) -> int:
    """Send as much of ``data`` as the peer takes within ``seconds``; the bytes sent."""
    loop, sent = asyncio.get_running_loop(), 0
    deadline = loop.time() + seconds
    while sent < len(data) and loop.time() < deadline:
        try:
            sent += s.send(data[sent : sent + 65536])
        except BlockingIOError:
            await asyncio.sleep(0.05)
    return sent


@pytest.mark.parametrize("framing", [b"Content-Length: %d\r\n", b"Transfer-Encoding: chunked\r\n"])
async def test_a_websocket_upgrade_cannot_carry_a_request_for_the_app(sidecar, framing):
    """The body of an upgrade request would reach the app as a request of its own, past the
    check and with forged X-Forwarded-For: refused with 400, the app sees nothing."""
    app = await RawApp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").start()
    await route_to(sidecar, app)
    smuggled = b"GET /admin HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
    body = smuggled if b"Length" in framing else b"%x\r\n%b\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    raw = (
        b"GET /ports/alice/5000/ws HTTP/1.1\r\nHost: h\r\nX-Proxy-Token: " + TOKEN.encode() + b"\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        + (framing % len(smuggled) if b"%d" in framing else framing)
        + b"\r\n"
        + body
    )
    out = await exchange(sidecar, raw)
    assert out.startswith(b"HTTP/1.1 400 ") and b"cannot have a body" in out
    await asyncio.sleep(0.2)
    assert app.received == b""


async def test_deadlines_hold_after_a_retry_that_fails(sidecar):
    """An app that closes a pooled connection and then refuses new ones (a restart): the
    retry's 502 leaves nothing waiting for an answer, and slow heads still get 408 after."""

    class RestartingApp:
        async def start(self):
            self.requests = 0
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            return self

        async def handle(self, reader, writer):
            while await reader.read(65536):
                self.requests += 1
                if self.requests > 1:  # goes away while handling the second request
                    self.server.close()
                    writer.close()
                    return
                writer.write(ok_reply())
                await writer.drain()

    app = await RestartingApp().start()
    await route_to(sidecar, app, "public")
    sidecar.upstream_timeout = 0.5
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    request = b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\n\r\n"
    writer.write(request)
    assert (await reader.read(1000)).startswith(b"HTTP/1.1 200")
    writer.write(request)  # on the pooled connection, which the app closes; its retry finds no app
    assert (await asyncio.wait_for(reader.read(1000), 5)).startswith(b"HTTP/1.1 502")
    writer.close()
    assert not sidecar.awaiting_answer
    await asyncio.sleep(1)  # past upstream_timeout: the ticks go on
    out = await exchange(sidecar, b"GET /ports/alice/5000/ HTTP/1.1\r\n", wait=3)
    assert out.startswith(b"HTTP/1.1 408")


async def test_the_hubs_api_reads_no_body_before_its_token(sidecar):
    """A stranger's large or never-ending body to the sidecar's API is not waited for, and a
    body cut short leaves no task or buffer behind."""
    sidecar.client_timeout = 30  # the 403 must not wait for the body
    raw = b"POST /_jhproxy-routes/api/routes/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\nx"
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(raw)
    out = await asyncio.wait_for(reader.read(1000), 3)
    assert out.startswith(b"HTTP/1.1 403") and b"Connection: close" in out
    writer.close()
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"POST /_jhproxy-routes/health HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\n" + b"x" * (MiB - 1))
        await writer.drain()
        writer.close()
    await asyncio.sleep(0.5)
    assert not sidecar._tasks
    assert sum(len(c.buffer) for c in live_client_connections()) < 64 * 1024


async def test_a_slow_body_to_the_hubs_api_gets_408(sidecar):
    """With the hub's token, a body that never completes: 408 after client_timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(
        b"POST /_jhproxy-routes/api/routes/ports/alice/5000 HTTP/1.1\r\nHost: h\r\n"
        b"Authorization: token api-secret\r\nContent-Length: 100\r\n\r\n{"
    )
    out = await asyncio.wait_for(reader.read(1000), 5)
    assert out.startswith(b"HTTP/1.1 408") and b"body did not arrive in time" in out
    writer.close()
    await asyncio.sleep(0.1)
    assert not sidecar._tasks


async def test_a_client_that_reads_no_answers_gets_no_more(sidecar):
    """Pipelined requests from a client that never reads: the sidecar stops answering (and
    reading) once its writes back up, so its memory for that client stays bounded."""
    request = b"GET /_jhproxy-routes/health HTTP/1.1\r\nHost: h\r\n\r\n"  # each answered at once
    s = await small_window_socket(sidecar)
    await send_for(s, request * (8 * MiB // len(request)), 3)  # what no buffer takes waits in the client
    [client] = live_client_connections()
    assert client.writes_paused
    assert client.transport.get_write_buffer_size() < 2 * MiB and len(client.buffer) < 512 * 1024
    s.close()


async def test_a_websocket_waits_for_a_client_that_reads_nothing(sidecar):
    """A client whose writes are already backed up when its websocket opens: the app's
    frames are not read for it without limit."""

    class FloodApp:
        sent = 0

        async def start(self):
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            return self

        async def handle(self, reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            for _ in range(64):
                writer.write(b"x" * MiB)
                self.sent += MiB
                try:
                    await asyncio.wait_for(writer.drain(), 2)
                except asyncio.TimeoutError:
                    return

    app = await FloodApp().start()
    await route_to(sidecar, app, "public")
    s = await small_window_socket(sidecar)
    await send_for(s, b"GET /_jhproxy-routes/health HTTP/1.1\r\nHost: h\r\n\r\n" * 60000, 1)  # answers it never reads
    await send_for(s, b"GET /ports/alice/5000/ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 1)
    await asyncio.sleep(4)  # the sidecar takes the upgrade once it can write again: never here
    [client] = live_client_connections()
    assert app.sent < 32 * MiB and client.transport.get_write_buffer_size() < 4 * MiB
    s.close()


async def test_a_pooled_connection_never_keeps_unsent_bytes(sidecar):
    """A connection to an app with writes still buffered (the app stopped reading) is closed,
    never pooled: its paused flow control would not reach the next request on it."""
    held = []

    async def never_reads(reader, writer):
        held.append(writer)
        await asyncio.sleep(30)

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = await sidecar.pool.connect(("127.0.0.1", port, None, False))
    conn.transport.write(b"y" * (32 * MiB))
    assert conn.transport.get_write_buffer_size() > 0
    sidecar.pool.release(conn)
    assert conn.closed and not sidecar.pool.idle.get(("127.0.0.1", port, None))
    server.close()


async def test_idle_pooled_connections_are_closed_without_new_traffic(sidecar):
    app = await RawApp(ok_reply()).start()
    await route_to(sidecar, app, "public")
    sidecar.pool.idle_timeout = 0.3
    out = await exchange(sidecar, b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and sidecar.pool.idle
    await asyncio.sleep(1.5)
    assert not sidecar.pool.idle


async def test_an_unasked_switch_of_protocols_is_a_bad_gateway(sidecar):
    """An app answering 101 to a plain request: 502, never a 101 on CHP's pooled connection."""
    app = await RawApp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: Upgrade\r\n\r\nRAW BYTES").start()
    await route_to(sidecar, app, "public")
    out = await exchange(sidecar, b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502") and b"RAW BYTES" not in out


async def test_underscored_names_of_the_sidecars_headers_never_reach_the_app(sidecar):
    """X_Forwarded_For is X-Forwarded-For to a WSGI or CGI app: a client's is dropped."""
    app = await RawApp(ok_reply()).start()
    await route_to(sidecar, app)
    raw = (
        b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\nX-Proxy-Token: " + TOKEN.encode() + b"\r\n"
        b"X_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\nx_proxy_token: leak\r\nX_App_Header: kept\r\n\r\n"
    )
    out = await exchange(sidecar, raw)
    assert out.startswith(b"HTTP/1.1 200")
    assert b"6.6.6.6" not in app.received and b"X_Forwarded_Proto" not in app.received and b"leak" not in app.received
    assert b"X_App_Header: kept" in app.received


async def test_a_burst_of_requests_opens_few_connections_at_a_time(sidecar):
    """Many requests at once to an app not answering yet: at most ``max_opening`` new
    connections wait on it (more would overflow a busy app's listen backlog, and the kernel
    resets them); the others wait their turn, and every one is answered."""
    gate, connections = asyncio.Event(), []

    async def slow_app(reader, writer):
        connections.append(writer)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await gate.wait()
                writer.write(ok_reply())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(slow_app, "127.0.0.1", 0)
    sidecar.table.set(
        "/ports/alice/5000", {"target": f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "access": "public"}
    )
    sidecar.pool.max_opening = 3
    requests = [
        asyncio.ensure_future(exchange(sidecar, b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 5))
        for _ in range(12)
    ]
    await asyncio.sleep(1)
    assert len(connections) == 3  # the other nine wait in the sidecar, not in the app's backlog
    gate.set()
    answers = await asyncio.gather(*requests)
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    assert len(connections) <= 12 and not sidecar.pool.waiting and not sidecar.pool.opening
    server.close()
