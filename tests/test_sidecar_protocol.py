"""HTTP edge cases at the sidecar, byte for byte: a real sidecar on a real port, a raw app
that answers with canned bytes, and raw client sockets (what CHP or an attacker could send).

Each case is something that, handled loosely, lets a request past the check, leaks a
credential, or desynchronises the pooled connection to the app.
"""

import asyncio
import json

import pytest

from jhproxy_routes.sidecar.server import Sidecar, serve
from jhproxy_routes.sidecar.token_cookie import TokenCookies
from jhproxy_routes.tokens import hash_token

TOKEN = "the-port-token"


class RawApp:
    """An app on 127.0.0.1 that records raw requests and answers with ``reply`` bytes."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.received = b""

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def handle(self, reader, writer):
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), 2)
                if not data:
                    break
                self.received += data
                if b"\r\n\r\n" in data:
                    writer.write(self.reply)
                    await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def sidecar():
    sidecar = Sidecar("api-secret", upstream_timeout=5)
    server = await serve(sidecar, "127.0.0.1", 0)
    sidecar.port = server.sockets[0].getsockname()[1]
    yield sidecar
    server.close()
    sidecar.pool.close_all()


async def route_to(sidecar, app, access="restricted"):
    data = {"target": f"http://127.0.0.1:{app.port}", "access": access, "cors_origins": ["*"], "username": "alice"}
    if access == "restricted":
        data["token_sha256"] = hash_token(TOKEN)
    sidecar.table.set("/ports/alice/5000", data)


async def exchange(sidecar, raw: bytes, wait: float = 1.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(raw)
    await writer.drain()
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), wait):
            out += chunk
    except asyncio.TimeoutError:
        pass
    writer.close()
    return out


def ok_reply(body=b"ok", extra=b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


async def test_connection_header_cannot_unframe_a_body(sidecar):
    app = await RawApp(ok_reply()).start()
    await route_to(sidecar, app)
    smuggled = b"GET /SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = (
        b"POST /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\nX-Proxy-Token: " + TOKEN.encode() + b"\r\n"
        b"Connection: keep-alive, Content-Length, Host\r\nContent-Length: %d\r\n\r\n%b" % (len(smuggled), smuggled)
    )
    out = await exchange(sidecar, raw)
    assert out.startswith(b"HTTP/1.1 200")
    # the app got one request whose declared length covers the would-be smuggled bytes
    assert app.received.count(b"HTTP/1.1\r\n") == 2  # the POST line and the body's text
    head, _, body = app.received.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(smuggled) in head and b"Host: h" in head
    assert body == smuggled


async def test_app_framing_is_rewritten(sidecar):
    # both Transfer-Encoding and Content-Length from the app: chunked wins, length is dropped
    app = await RawApp(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ).start()
    await route_to(sidecar, app, "public")
    out = await exchange(sidecar, b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Length" not in head and b"Transfer-Encoding: chunked" in head
    assert body == b"3\r\nabc\r\n0\r\n\r\n"
    # an HTTP/1.0 client never gets chunks: the body ends with the connection
    out = await exchange(sidecar, b"GET /ports/alice/5000/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"abc"


async def test_app_cannot_set_hub_cookies(sidecar):
    cookies = (
        b"Set-Cookie: jupyterhub-hub-login=evil; Path=/hub/\r\nSet-Cookie: _xsrf=evil\r\n"
        b"Set-Cookie: jhproxy-routes-auth=x\r\nSet-Cookie: app=fine; Path=/\r\n"
    )
    app = await RawApp(ok_reply(extra=cookies)).start()
    await route_to(sidecar, app, "public")
    out = await exchange(sidecar, b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert b"Set-Cookie: app=fine" in out
    assert b"jupyterhub-hub-login" not in out and b"_xsrf" not in out and b"jhproxy-routes-auth" not in out


@pytest.mark.parametrize(
    "raw",
    [
        "POST /ports/alice/5000/ HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n",
        "GET /ports/alice/5000/ HTTP/1.1\r\nX: \u00ff\u00fe\r\nContent-Length: 1\u00b9\r\n\r\n",
        "POST /_jhproxy-routes/api/routes/x HTTP/1.1\r\nContent-Length: \u00b3\r\n\r\n",
    ],
)
async def test_odd_bytes_get_a_clean_400(sidecar, raw):
    app = await RawApp(ok_reply()).start()
    await route_to(sidecar, app, "public")
    out = await exchange(sidecar, raw.encode("latin-1"))
    assert out.startswith(b"HTTP/1.1 400"), out
    assert json.loads(out.partition(b"\r\n\r\n")[2])["status"] == 400
    assert app.received == b""


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.\xff 200 OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb9\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
    ],
)
async def test_malformed_app_responses_become_502(sidecar, reply):
    app = await RawApp(reply).start()
    await route_to(sidecar, app, "public")
    out = await exchange(sidecar, b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502"), out


async def test_refused_websocket_upgrade_keeps_its_body(sidecar):
    app = await RawApp(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nnope!").start()
    await route_to(sidecar, app, "public")
    out = await exchange(
        sidecar,
        b"GET /ports/alice/5000/ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403") and body == b"nope!"
    assert b"keep-alive" not in head


async def test_bodies_on_answered_requests_are_never_parsed_as_requests(sidecar):
    app = await RawApp(ok_reply()).start()
    await route_to(sidecar, app)
    inner = b"GET /ports/alice/5000/inner HTTP/1.1\r\nHost: h\r\n\r\n"
    # health with a body, on a kept-alive connection: the body is read, not run
    out = await exchange(sidecar, b"POST /_jhproxy-routes/health HTTP/1.1\r\nContent-Length: %d\r\n\r\n%b" % (len(inner), inner))
    assert out.count(b"HTTP/1.1 ") == 1
    # a refused request with a body: the connection is closed, the body never parsed
    out = await exchange(sidecar, b"POST /ports/alice/5000/ HTTP/1.1\r\nContent-Length: %d\r\n\r\n%b" % (len(inner), inner))
    assert out.startswith(b"HTTP/1.1 403") and out.count(b"HTTP/1.1 ") == 1
    # a preflight with a body and Expect: answered at once, then closed
    out = await exchange(
        sidecar,
        b"OPTIONS /ports/alice/5000/ HTTP/1.1\r\nOrigin: http://o\r\nAccess-Control-Request-Method: GET\r\n"
        b"Expect: 100-continue\r\nContent-Length: 10\r\n\r\n",
        wait=3,
    )
    assert out.startswith(b"HTTP/1.1 204") and b"Connection: close" in out
    assert app.received == b""


async def test_pooled_connection_with_leftover_bytes_is_not_reused(sidecar):
    # the app sends more than its Content-Length says: those bytes must not become the
    # next client's response
    app = await RawApp(ok_reply(b"one") + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged").start()
    await route_to(sidecar, app, "public")
    raw = b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\n\r\n"
    first = await exchange(sidecar, raw)
    assert first.endswith(b"one")
    second = await exchange(sidecar, raw)
    assert b"forged" not in second and second.endswith(b"one")


async def test_slow_heads_get_408_but_idle_connections_stay(sidecar):
    """Slowloris: a head dribbled in and never finished must not hold a connection for good;
    an idle keep-alive connection (CHP's, between requests) is left open."""
    app = await RawApp(ok_reply()).start()
    await route_to(sidecar, app)
    sidecar.client_timeout = 0.3
    out = await exchange(sidecar, b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\nX-Slow: ", wait=2)
    assert out.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in out
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    await asyncio.sleep(1)  # over three timeouts, idle
    writer.write(b"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\nX-Proxy-Token: " + TOKEN.encode() + b"\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_head_probes_get_headers_only_and_the_connection_stays_in_step(sidecar):
    """A probe that sends HEAD /health then GET /health on one connection: a body after the
    HEAD answer would be read as the start of the next answer."""
    out = await exchange(sidecar, b"HEAD /_jhproxy-routes/health HTTP/1.1\r\n\r\nGET /_jhproxy-routes/ready HTTP/1.1\r\n\r\n")
    first, _, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"Content-Length: " in first
    assert rest.startswith(b"HTTP/1.1 503"), out  # the ready answer comes right after the HEAD's headers


async def test_with_token_cookies_off_a_browser_keeps_the_token_in_the_address():
    """``c.PortRoutes.token_cookies = False``: a navigation with the right token gets the
    app's page (the token stripped, as for a script), no redirect and no cookie; a cookie of
    the port made while they were on is worth nothing."""
    sidecar = Sidecar("api-secret", upstream_timeout=5, token_cookies=False)
    server = await serve(sidecar, "127.0.0.1", 0)
    sidecar.port = server.sockets[0].getsockname()[1]
    app = await RawApp(ok_reply()).start()
    await route_to(sidecar, app)
    route, _ = sidecar.table.lookup("/ports/alice/5000/")
    old_cookie = TokenCookies("api-secret")
    navigate = b"Sec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Site: none\r\nAccept: text/html\r\n"
    out = await exchange(
        sidecar, b"GET /ports/alice/5000/?proxy_token=%b HTTP/1.1\r\nHost: h\r\n%b\r\n" % (TOKEN.encode(), navigate)
    )
    assert out.startswith(b"HTTP/1.1 200") and b"set-cookie" not in out.lower(), out
    assert b"proxy_token" not in app.received and TOKEN.encode() not in app.received
    cookie = b"Cookie: %b=%b\r\n" % (old_cookie.name(route).encode(), old_cookie.value(route).encode())
    out = await exchange(sidecar, b"GET /ports/alice/5000/x HTTP/1.1\r\nHost: h\r\n%b\r\n" % cookie)
    assert out.startswith(b"HTTP/1.1 403"), out
    server.close()
    sidecar.pool.close_all()
