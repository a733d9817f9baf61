"""The sidecar as a proxy: streaming, websockets, CORS, credential hygiene, forwarding
headers and upstream errors, through the real CHP, in front of a real app."""

import asyncio
import hashlib
import json
import time

import httpx
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.rig import assert_no_credentials, free_port

GOOD_ORIGIN = "http://good.example"
GIB = 1 << 30


@pytest.fixture(scope="module")
def apps(make_app):
    return {"main": make_app(), "strip": make_app(), "cors": make_app()}


@pytest.fixture(scope="module")
def dead_port():
    return free_port()  # allowed, but nothing listens there


@pytest.fixture(scope="module")
def hub(make_hub, apps, dead_port):
    ports = [
        apps["main"].port,
        {"port": apps["strip"].port, "strip_prefix": True},
        {"port": apps["cors"].port, "cors_origins": [GOOD_ORIGIN]},
        dead_port,
    ]
    return make_hub(ports, "c.PortRoutes.upstream_timeout = 2")


@pytest.fixture(scope="module")
def token(hub):
    api_token = hub.user_token("alice")
    hub.spawn("alice")
    return hub.proxytoken(api_token, "POST", content="random").json()


def url(hub, port, rest="/"):
    return f"{hub.url}/ports/alice/{port}{rest}"


def sidecar_peak_rss_kib(hub) -> int:
    [pid] = hub.child_pids("jhproxy_routes.sidecar")
    status = open(f"/proc/{pid}/status").read()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def pattern_sha256(size: int) -> str:
    chunk = bytes(range(256)) * 256
    digest = hashlib.sha256()
    while size:
        digest.update(chunk[: min(size, len(chunk))])
        size -= min(size, len(chunk))
    return digest.hexdigest()


def test_credentials_never_reach_the_app(hub, apps, token):
    app = apps["main"]
    before = len(app.received())
    cookies = (
        "jupyterhub-hub-login=HUBSECRET; jupyterhub-session-id=SESSIONSECRET; _xsrf=XSRFSECRET; "
        "jhproxy-routes-auth=SIDECARSECRET; jupyterhub-user-alice=USERSECRET; app_session=keep-me"
    )
    response = httpx.post(
        url(hub, app.port, "/api?proxy_token=" + token + "&a=1"),
        headers={"X-Proxy-Token": token, "Cookie": cookies, "Authorization": "Bearer app-own-auth"},
        content=b"payload",
    )
    assert response.status_code == 200, response.text
    echoed = response.json()
    headers = {k.lower(): v for k, v in echoed["headers"]}
    assert headers["cookie"] == "app_session=keep-me"
    assert headers["authorization"] == "Bearer app-own-auth"  # the app's own auth passes untouched
    assert echoed["query"] == "a=1"
    assert echoed["body_bytes"] == 7
    received = app.received()[before:]
    assert len(received) == 1
    assert_no_credentials(received, [token, "HUBSECRET", "SESSIONSECRET", "XSRFSECRET", "SIDECARSECRET", "USERSECRET"])


def test_forwarded_headers_and_prefix(hub, apps, token):
    kept = httpx.get(url(hub, apps["main"].port, "/a/b?x=1"), headers={"X-Proxy-Token": token}).json()
    assert kept["path"] == f"/ports/alice/{apps['main'].port}/a/b"
    headers = {k.lower(): v for k, v in kept["headers"]}
    assert headers["x-forwarded-for"].startswith("127.0.0.1")
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{hub.port}"
    stripped = httpx.get(url(hub, apps["strip"].port, "/a/b/?x=1"), headers={"X-Proxy-Token": token}).json()
    assert stripped["path"] == "/a/b/"
    assert stripped["query"] == "x=1"
    headers = {k.lower(): v for k, v in stripped["headers"]}
    assert headers["x-forwarded-prefix"] == f"/ports/alice/{apps['strip'].port}"
    root = httpx.get(url(hub, apps["strip"].port, "/"), headers={"X-Proxy-Token": token}).json()
    assert root["path"] == "/"


@pytest.mark.parametrize(
    "path",
    ["/../../bob/5000/", "/%2e%2e/%2e%2e/bob/", "/..%2f..%2fbob/", "/%2E%2E/x", "/x/%ff%fe"],
)
def test_no_escape_from_the_prefix(hub, apps, token, path):
    app = apps["main"]
    before = len(app.received())
    # send the raw path: clients would normalise it away
    with httpx.Client() as client:
        request = client.build_request("GET", url(hub, app.port), headers={"X-Proxy-Token": token})
        request.url = request.url.copy_with(raw_path=f"/ports/alice/{app.port}{path}".encode())
        response = client.send(request)
    # CHP resolves plain and %2e dots itself (to another route, checked on its own) and sends
    # what it cannot decode to the hub; the sidecar refuses dots hidden behind %2f and bad
    # UTF-8: either way nothing reaches this app
    assert response.status_code >= 300, response.text
    assert "Traceback" not in response.text
    assert len(app.received()) == before


def test_cors_preflight_and_request_from_another_origin(hub, apps, token):
    main = url(hub, apps["main"].port, "/api")
    preflight = httpx.options(
        main,
        headers={
            "Origin": "http://elsewhere.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-proxy-token, content-type",
        },
    )
    assert preflight.status_code == 204  # no token needed
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "x-proxy-token" in preflight.headers["access-control-allow-headers"].lower()
    assert "content-type" in preflight.headers["access-control-allow-headers"].lower()
    assert preflight.headers["access-control-allow-methods"] == "POST"
    assert "access-control-allow-credentials" not in preflight.headers
    response = httpx.post(main, headers={"Origin": "http://elsewhere.example", "X-Proxy-Token": token}, json={})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    # a refused request carries CORS headers too, so the page can read why
    refused = httpx.post(main, headers={"Origin": "http://elsewhere.example"}, json={})
    assert refused.status_code == 403 and refused.headers["access-control-allow-origin"] == "*"


def test_cors_restricted_to_listed_origins(hub, apps, token):
    target = url(hub, apps["cors"].port, "/api")
    ask = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-proxy-token"}
    good = httpx.options(target, headers={"Origin": GOOD_ORIGIN, **ask})
    assert good.status_code == 204
    assert good.headers["access-control-allow-origin"] == GOOD_ORIGIN
    assert "origin" in good.headers["vary"].lower()
    bad = httpx.options(target, headers={"Origin": "http://evil.example", **ask})
    assert bad.status_code == 403
    assert "access-control-allow-origin" not in bad.headers
    response = httpx.get(target, headers={"Origin": "http://evil.example", "X-Proxy-Token": token})
    assert "access-control-allow-origin" not in response.headers


def test_upstream_down_and_slow(hub, apps, dead_port, token):
    response = httpx.get(url(hub, dead_port), headers={"X-Proxy-Token": token})
    assert response.status_code == 502
    assert f"Nothing is listening on port {dead_port} of alice's server yet" in response.json()["message"]
    start = time.monotonic()
    response = httpx.get(url(hub, apps["main"].port, "/slow?sleep=10"), headers={"X-Proxy-Token": token}, timeout=30)
    assert response.status_code == 504
    assert "did not answer within 2s" in response.json()["message"]
    assert time.monotonic() - start < 8


async def test_websocket_through_a_protected_port(hub, apps, token):
    ws_url = url(hub, apps["main"].port, "/ws").replace("http://", "ws://")
    request = HTTPRequest(ws_url, headers={"X-Proxy-Token": token})
    conn = await websocket_connect(request, subprotocols=["echo.v1", "other"])
    assert conn.selected_subprotocol == "echo.v1"
    for message in ("hello", "x" * 100_000):
        await conn.write_message(message)
        assert await conn.read_message() == message
    await conn.write_message(b"\x00\x01binary", binary=True)
    assert await conn.read_message() == b"\x00\x01binary"
    conn.close()
    # browsers cannot set headers on a websocket: the query parameter works, and is removed
    before = len(apps["main"].received())
    conn = await websocket_connect(f"{ws_url}?proxy_token={token}")
    await conn.write_message("q")
    assert await conn.read_message() == "q"
    conn.close()
    [entry] = apps["main"].received()[before:]
    assert "proxy_token" not in entry["query"]
    # without a token, no upgrade
    with pytest.raises(Exception) as refused:
        await websocket_connect(ws_url)
    assert "403" in str(refused.value)


def test_one_gib_down_and_up_with_flat_memory(hub, apps, token):
    start_rss = sidecar_peak_rss_kib(hub)
    headers = {"X-Proxy-Token": token}
    digest = hashlib.sha256()
    with httpx.stream("GET", url(hub, apps["main"].port, f"/download?bytes={GIB}"), headers=headers, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-length"] == str(GIB)
        for chunk in r.iter_raw(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == pattern_sha256(GIB)

    def body():
        chunk = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(GIB // len(chunk)):
            yield chunk

    # streamed upload, chunked (no Content-Length): neither side may buffer it
    response = httpx.post(url(hub, apps["main"].port, "/upload"), headers=headers, content=body(), timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["body_bytes"] == GIB
    expected = hashlib.sha256()
    for chunk in body():
        expected.update(chunk)
    assert response.json()["body_sha256"] == expected.hexdigest()
    growth_mib = (sidecar_peak_rss_kib(hub) - start_rss) / 1024
    assert growth_mib < 20, f"sidecar peak memory grew by {growth_mib:.1f} MiB moving 2 GiB"


def test_large_request_head_and_many_requests_on_one_connection(hub, apps, token):
    with httpx.Client() as client:
        for i in range(200):
            response = client.get(url(hub, apps["main"].port, f"/n/{i}"), headers={"X-Proxy-Token": token})
            assert response.status_code == 200 and response.json()["path"].endswith(f"/n/{i}")
    # CHP (node) stops heads over 16 KiB itself; the sidecar has its own limit behind it
    path = f"/ports/alice/{apps['main'].port}/"
    huge = httpx.get(hub.sidecar_url + path, headers={"X-Proxy-Token": token, "X-Big": "a" * 100_000})
    assert huge.status_code == 431
    assert "Traceback" not in huge.text


def test_head_and_empty_bodies(hub, apps, token):
    headers = {"X-Proxy-Token": token}
    response = httpx.head(url(hub, apps["main"].port, "/download?bytes=1000"), headers=headers)
    assert response.status_code == 200 and response.content == b""
    response = httpx.delete(url(hub, apps["main"].port, "/thing"), headers=headers)
    assert response.status_code == 200 and json.loads(response.text)["method"] == "DELETE"


async def test_concurrent_clients_see_their_own_answers(hub, apps, token):
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=50)) as client:

        async def one(i):
            response = await client.post(
                url(hub, apps["main"].port, f"/c/{i}"), headers={"X-Proxy-Token": token}, content=str(i).encode() * 1000
            )
            assert response.status_code == 200
            body = response.json()
            assert body["path"].endswith(f"/c/{i}")
            assert body["body_sha256"] == hashlib.sha256(str(i).encode() * 1000).hexdigest()

        await asyncio.gather(*(one(i) for i in range(300)))
