"""The route API clients against the real tables: a real configurable-http-proxy process and
a real sidecar on 127.0.0.1, through the hub's own lean transport.

What could go wrong: a keep-alive connection the server closed makes a request fail; a big
route table is misread; a bulk change half-applied; another program's CHP routes touched.
"""

import asyncio
import json
import secrets
import subprocess

import httpx
import pytest

from jhproxy_routes.routeapi import RouteAPI, RouteAPIError, SidecarRouteAPI, json_object_items
from jhproxy_routes.sidecar.server import Sidecar, serve
from jhproxy_routes.transport import KeepAliveTransport
from tests.rig import CHP, free_port, port_open, wait_for


@pytest.fixture(scope="module")
def chp(tmp_path_factory):
    """A real CHP; yields its API url and token."""
    if not CHP.exists():
        raise AssertionError(f"configurable-http-proxy not found at {CHP}: run scripts/bootstrap.sh (npm ci)")
    token, api_port = secrets.token_hex(16), free_port()
    log = tmp_path_factory.mktemp("chp") / "chp.log"
    proc = subprocess.Popen(
        [str(CHP), "--ip", "127.0.0.1", "--port", str(free_port()), "--api-ip", "127.0.0.1", "--api-port", str(api_port)],
        env={"CONFIGPROXY_AUTH_TOKEN": token, "PATH": "/usr/bin:/bin"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: port_open(api_port), 30, "CHP's API", log)
        yield f"http://127.0.0.1:{api_port}", token
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def sidecar():
    sidecar = Sidecar("api-secret")
    server = await serve(sidecar, "127.0.0.1", 0)
    yield sidecar, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/_jhproxy-routes/"
    server.close()


def sidecar_route(i: int) -> dict:
    return {"target": f"http://10.0.{i >> 8}.{i & 255}:5000", "access": "restricted", "username": f"u{i}"}


async def test_chp_routes_in_bulk_and_only_ours(chp):
    api_url, token = chp
    httpx.post(
        f"{api_url}/api/routes/someone-else", json={"target": "http://127.0.0.1:9"}, headers={"Authorization": f"token {token}"}
    ).raise_for_status()
    api = RouteAPI("proxy", api_url, token, concurrency=5)
    wanted = {
        f"/ports/user{i}@x/{p}/": {"target": f"http://10.0.0.{i}:{p}", "username": f"user{i}@x"}
        for i in range(150)
        for p in (5000, 8050)
    }
    await api.add_many(wanted)
    got = await api.get_all()
    assert set(got) == set(wanted)  # escaped routespecs back, the foreign route not among them
    assert got["/ports/user7@x/8050/"]["target"] == "http://10.0.0.7:8050"
    await api.delete_many(list(wanted)[:100])
    assert len(await api.get_all()) == 200
    await api.delete_many(list(wanted))
    assert await api.get_all() == {}
    raw = httpx.get(f"{api_url}/api/routes", headers={"Authorization": f"token {token}"}).json()
    assert "/someone-else" in raw
    await api.aclose()


async def test_wrong_token_is_a_clear_error(chp):
    api = RouteAPI("proxy", chp[0], "not-the-token", retry_timeout=2)
    with pytest.raises(RouteAPIError, match="HTTP 403"):
        await api.add("/ports/a/5000/", {"target": "http://10.0.0.1:5000"})
    await api.aclose()


async def test_sidecar_bulk_changes(sidecar):
    table, url = sidecar
    api = SidecarRouteAPI("sidecar", url, "api-secret")
    routes = {f"/ports/u{i}/5000/": sidecar_route(i) for i in range(1200)}  # three bulk requests
    await api.add_many(routes)
    assert set(await api.get_all()) == set(routes)
    await api.delete_many(list(routes)[:1000])
    assert set(await api.get_all()) == set(list(routes)[1000:])
    await api.aclose()


async def test_a_bad_route_refuses_the_whole_bulk_request(sidecar):
    table, url = sidecar
    api = SidecarRouteAPI("sidecar", url, "api-secret", retry_timeout=2)
    routes = {"/ports/good/5000/": sidecar_route(1), "/ports/bad/5000/": {**sidecar_route(2), "target": "file:///etc/passwd"}}
    with pytest.raises(RouteAPIError, match="HTTP 400.*target must be http"):
        await api.add_many(routes)
    assert table.table.routes == {}  # nothing half-applied
    await api.aclose()


async def test_sidecar_bulk_needs_the_hubs_token(sidecar):
    table, url = sidecar
    body = {"add": {"/ports/x/5000": sidecar_route(1)}}
    async with httpx.AsyncClient() as client:
        response = await client.post(url + "api/bulk", json=body, headers={"Authorization": "token guess"})
        assert response.status_code == 403
        response = await client.post(url + "api/bulk", content=b"{not json", headers={"Authorization": "token api-secret"})
        assert response.status_code == 400 and "Traceback" not in response.text
    assert table.table.routes == {}


class OneShotServer:
    """Answers each connection once, then closes it without saying so (as a server whose
    keep-alive timeout just ran out), or answers with ``reply`` bytes."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.connections = 0

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.reply)
            await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc):
        self.server.close()


async def test_transport_retries_once_when_a_kept_connection_was_closed():
    """The server answers the first request of a connection and drops the second unanswered
    (as when its keep-alive timeout runs out just as a request is sent)."""
    requests = []

    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            requests.append(1)
            writer.write(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n5\r\n": 1}\r\n0\r\n\r\n')
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            requests.append(2)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api/routes"
    transport = KeepAliveTransport()
    for _ in range(3):
        response = await transport.handle_async_request(httpx.Request("GET", url))
        assert response.json() == {"a": 1}
    assert requests == [1, 2, 1, 2, 1]  # each second request was sent again on a new connection
    await transport.aclose()
    server.close()


@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", b"SSH-2.0-nope\r\n\r\n", b""],
)
async def test_transport_refuses_malformed_answers(reply):
    async with OneShotServer(reply) as url:
        transport = KeepAliveTransport()
        with pytest.raises(httpx.RemoteProtocolError):
            await transport.handle_async_request(httpx.Request("GET", url + "/"))
        await transport.aclose()


async def test_transport_connect_error_names_the_address():
    port = free_port()
    with pytest.raises(httpx.ConnectError, match=f"127.0.0.1:{port}"):
        await KeepAliveTransport().handle_async_request(httpx.Request("GET", f"http://127.0.0.1:{port}/"))


@pytest.mark.parametrize(
    "text",
    ["{}", ' {\n"a" : {"b": [1, "}"]} , "c":null } ', '{"x\\"y": "}{"}', json.dumps({f"k{i}": {"v": i} for i in range(3000)})],
)
def test_json_object_items_reads_what_json_reads(text):
    assert dict(json_object_items(text)) == json.loads(text)


@pytest.mark.parametrize("text", ["", "[]", "{", '{"a":1,}', '{"a":1}}', '{"a" 1}', "{1: 2}", '{"a":1} x'])
def test_json_object_items_refuses_what_is_not_one_object(text):
    with pytest.raises(ValueError):
        list(json_object_items(text))
