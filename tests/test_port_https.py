"""Ports whose apps serve TLS themselves (``"protocol": "https"``): a real hub serving HTTPS
with CHP and the sidecar, and the echo app serving HTTPS with a throwaway certificate of
the test CA (``tests/certs.py``), which the sidecar does not verify; then the same behind
Traefik. Requests, streamed bodies and websockets reach the app over TLS; a protected port
stays closed without its token; a port and an app that disagree about TLS get a clear
error page, never the app's answer or a traceback; a pooled plain connection never carries
a TLS route's request, nor the other way round.
"""

import asyncio
import hashlib
import shutil
import ssl
import subprocess
import sys

import httpx
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jhproxy_routes.sidecar.server import Sidecar, serve
from jhproxy_routes.tokens import hash_token
from tests.rig import TraefikHub, free_port, free_ports, port_open, wait_for
from tests.test_apps import COMMANDS, EXAMPLES
from tests.test_sidecar_protocol import RawApp, ok_reply

MIB = 1 << 20
BODY = 256 * MIB
SECRETS = "jupyterhub-hub-login=HUBSECRET; jupyterhub-session-id=SESSIONSECRET; app_session=keep-me"


@pytest.fixture(scope="module")
def range_ports():
    first = free_ports(2)
    return first, first + 1


@pytest.fixture(scope="module")
def apps(make_app, certificate, range_ports):
    return {
        "tls": make_app(tls=certificate),  # protected, https
        "public": make_app(tls=certificate),  # public, https
        "tls_as_plain": make_app(tls=certificate),  # listed as http: a mistake
        "plain_as_tls": make_app(),  # listed as https: the other mistake
        "range": make_app(range_ports[1], tls=certificate),  # in an https range
    }


#: how each framework is told to serve TLS itself, after its command from examples/apps/commands.py
TLS_FLAGS = {
    "fastapi": ["--ssl-certfile", "{cert}", "--ssl-keyfile", "{key}"],  # uvicorn
    "streamlit": ["--server.sslCertFile", "{cert}", "--server.sslKeyFile", "{key}"],
}


@pytest.fixture(scope="module")
def framework_ports():
    return {framework: free_port() for framework in TLS_FLAGS}


@pytest.fixture(scope="module")
def frameworks(framework_ports, certificate, module_tmp):
    """uvicorn (FastAPI) and Streamlit serving HTTPS on alice's path routes, started with
    the commands the docs show and their own TLS options."""
    workdir = module_tmp / "apps"
    shutil.copytree(EXAMPLES, workdir, ignore=shutil.ignore_patterns("__pycache__", "runs", ".gradio"))
    procs = {}
    for framework, port in framework_ports.items():
        argv = COMMANDS.command(framework, port, f"/ports/alice/{port}")
        argv += [flag.format(cert=certificate.cert, key=certificate.key) for flag in TLS_FLAGS[framework]]
        log = module_tmp / f"{framework}-{port}.log"
        procs[framework] = (
            subprocess.Popen([sys.executable, *argv[1:]], cwd=workdir, stdout=log.open("w"), stderr=subprocess.STDOUT),
            log,
        )
    for framework, (proc, log) in procs.items():
        wait_for(lambda: port_open(framework_ports[framework]) or proc.poll() is not None, 120, framework, log)
        assert proc.poll() is None, f"{framework} exited:\n{log.read_text()[-3000:]}"
    yield framework_ports
    for proc, _ in procs.values():
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def hub(make_hub, apps, certificate, range_ports, framework_ports):
    ports = [
        {"port": apps["tls"].port, "protocol": "https"},
        {"port": apps["public"].port, "protocol": "https", "access": "public", "scope_cookies": False},
        {"port": apps["tls_as_plain"].port},
        {"port": apps["plain_as_tls"].port, "protocol": "https"},
        {"port": f"{range_ports[0]}-{range_ports[1]}", "protocol": "https"},
        {"port": framework_ports["fastapi"], "protocol": "https", **COMMANDS.PATH_ROUTE_OPTIONS["fastapi"]},
        {"port": framework_ports["streamlit"], "protocol": "https", **COMMANDS.PATH_ROUTE_OPTIONS["streamlit"]},
    ]
    return make_hub(ports, tls=certificate)


@pytest.fixture(scope="module")
def token(hub):
    api_token = hub.user_token("alice")
    hub.spawn("alice")
    return hub.proxytoken(api_token, "POST", content="random").json()


def url(hub, port, rest="/"):
    return f"{hub.url}/ports/alice/{port}{rest}"


def get(hub, port, rest="/", **kwargs):
    return httpx.get(url(hub, port, rest), verify=hub.verify, timeout=60, **kwargs)


def sidecar_peak_rss_kib(hub) -> int:
    [pid] = hub.child_pids("jhproxy_routes.sidecar")
    status = open(f"/proc/{pid}/status").read()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def test_https_ports_go_through_the_sidecar_to_https_targets(hub, apps, token, range_ports):
    """Every https port's proxy route leads to the sidecar, the public one too (the proxy
    would verify the app's certificate), and the sidecar's leads to ``https://``; the
    settings object and the route list say which protocol each port has."""
    routes = hub.port_routes()
    for name in ("tls", "public", "plain_as_tls"):
        assert routes[f"/ports/alice/{apps[name].port}"]["target"] == hub.sidecar_url, name
    assert routes["/ports/alice"]["target"] == hub.sidecar_url  # the range
    rows = {str(row["port"]): row for row in hub.api("GET", "/jhproxy-routes/routes").json() if row["user"] == "alice"}
    for name in ("tls", "public", "plain_as_tls"):
        port = apps[name].port
        assert rows[str(port)]["protocol"] == "https" and rows[str(port)]["target"] == f"https://127.0.0.1:{port}"
    assert rows[str(apps["tls_as_plain"].port)]["protocol"] == "http"
    assert rows[str(apps["tls_as_plain"].port)]["target"] == f"http://127.0.0.1:{apps['tls_as_plain'].port}"
    assert rows[f"{range_ports[0]}-{range_ports[1]}"]["protocol"] == "https"
    settings = hub.proxytoken(hub.user_token("alice"), params={"format": "full"}).json()
    protocols = {str(p["port"]): p["protocol"] for p in settings["ports"]}
    assert (
        protocols.items()
        >= {
            str(apps["tls"].port): "https",
            str(apps["public"].port): "https",
            str(apps["tls_as_plain"].port): "http",
            str(apps["plain_as_tls"].port): "https",
            f"{range_ports[0]}-{range_ports[1]}": "https",
        }.items()
    )


def test_a_protected_https_port_reaches_the_app_over_tls_with_its_token_only(hub, apps, token):
    app = apps["tls"]
    before = len(app.received())
    response = get(hub, app.port, "/")
    assert response.status_code == 403
    assert len(app.received()) == before, "a request without the token reached the app"
    response = get(hub, app.port, f"/some/path?x=1&proxy_token={token}", headers={"X-Proxy-Token": token, "Cookie": SECRETS})
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["scheme"] == "https", "the app was not reached over TLS"
    assert echoed["path"] == f"/ports/alice/{app.port}/some/path" and echoed["query"] == "x=1"
    sent = str(echoed["headers"])
    assert token not in sent and "HUBSECRET" not in sent and "SESSIONSECRET" not in sent and "keep-me" in sent


def test_bodies_stream_both_ways_over_tls(hub, apps, token):
    app, headers = apps["tls"], {"X-Proxy-Token": token}
    start_rss = sidecar_peak_rss_kib(hub)

    def body():
        chunk = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(BODY // MIB):
            yield chunk

    # chunked (no Content-Length): neither the sidecar nor its TLS may hold it
    response = httpx.post(url(hub, app.port, "/upload"), headers=headers, content=body(), verify=hub.verify, timeout=120)
    assert response.status_code == 200, response.text
    expected = hashlib.sha256()
    for chunk in body():
        expected.update(chunk)
    assert response.json()["body_bytes"] == BODY and response.json()["body_sha256"] == expected.hexdigest()
    assert response.json()["scheme"] == "https"
    size = 0
    with httpx.stream("GET", url(hub, app.port, f"/download?bytes={BODY}"), headers=headers, verify=hub.verify, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-length"] == str(BODY)
        for chunk in r.iter_raw(MIB):
            size += len(chunk)
    assert size == BODY
    growth_mib = (sidecar_peak_rss_kib(hub) - start_rss) / 1024
    assert growth_mib < 30, f"sidecar peak memory grew by {growth_mib:.1f} MiB moving {2 * BODY // MIB} MiB over TLS"


async def test_websockets_echo_over_tls(hub, apps, token, certificate):
    """wss from the client to the proxy, then TLS again from the sidecar to the app."""
    app = apps["tls"]
    ws_url = url(hub, app.port, "/ws").replace("https://", "wss://")
    tls = certificate.client_context()
    conn = await websocket_connect(HTTPRequest(ws_url, headers={"X-Proxy-Token": token}, ssl_options=tls))
    for message in ("hello", "x" * 300_000):
        await conn.write_message(message)
        assert await conn.read_message() == message
    await conn.write_message(b"\x00\x01binary" * 100_000, binary=True)
    assert await conn.read_message() == b"\x00\x01binary" * 100_000
    conn.close()
    entry = app.received()[-1]
    assert entry["path"].endswith("/ws") and entry["scheme"] == "https"
    with pytest.raises(Exception) as refused:
        await websocket_connect(HTTPRequest(ws_url, ssl_options=tls))
    assert "403" in str(refused.value)


def test_a_public_https_port_answers_anyone_through_the_sidecar(hub, apps, token):
    app = apps["public"]
    response = get(hub, app.port, "/open", headers={"Cookie": SECRETS})
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["scheme"] == "https" and echoed["path"] == f"/ports/alice/{app.port}/open"
    assert "HUBSECRET" not in str(echoed["headers"]), "the sidecar strips the hub's cookies"


def test_a_range_of_https_ports(hub, apps, token, range_ports):
    response = get(hub, range_ports[1], "/in/range", headers={"X-Proxy-Token": token})
    assert response.status_code == 200, response.text
    assert response.json()["scheme"] == "https" and response.json()["path"] == f"/ports/alice/{range_ports[1]}/in/range"


async def test_real_frameworks_serving_https(hub, token, frameworks, certificate):
    """uvicorn (FastAPI, with strip_prefix) and Streamlit (a page, its health check, and
    the websocket its page opens) serving their own TLS, behind the port."""
    headers = {"X-Proxy-Token": token}
    fastapi, streamlit = frameworks["fastapi"], frameworks["streamlit"]
    response = get(hub, fastapi, "/items/21", headers=headers)
    assert response.status_code == 200 and response.json() == {"item_id": 21, "doubled": 42}, response.text
    assert get(hub, fastapi, "/openapi.json", headers=headers).json()["info"]["title"].startswith("jhproxy-routes")
    assert get(hub, fastapi, "/items/21").status_code == 403
    response = get(hub, streamlit, "/", headers=headers)
    assert response.status_code == 200 and "<noscript>" in response.text, response.text[:300]
    assert get(hub, streamlit, "/_stcore/health", headers=headers).text == "ok"
    ws_url = url(hub, streamlit, "/_stcore/stream").replace("https://", "wss://")
    request = HTTPRequest(ws_url, headers=headers, ssl_options=certificate.client_context())
    conn = await websocket_connect(request, subprotocols=["streamlit"])
    assert conn.protocol is not None  # upgraded: Streamlit's websocket, over TLS both ways
    conn.close()


@pytest.mark.parametrize(
    "name, says",
    [
        ("tls_as_plain", "If it serves HTTPS, this port is set up for plain HTTP"),
        ("plain_as_tls", "does not speak HTTPS"),
    ],
)
def test_a_port_and_an_app_that_disagree_about_tls_get_a_clear_error(hub, apps, token, name, says):
    """A script gets the reason in words, a browser the hub's error page with it; never the
    app's answer, nor a traceback."""
    app = apps[name]
    before = len(app.received())
    for accept in ("*/*", "text/html"):
        response = get(hub, app.port, "/x", headers={"X-Proxy-Token": token, "Accept": accept})
        assert response.status_code == 502, response.text[:500]
        text = response.text.replace("&#39;", "'")
        assert says in text, text[:1000]
        assert "Traceback" not in text and 'File "' not in text
    assert len(app.received()) == before, "a request the app could not have understood was recorded as one"


# ---- the pool, at the sidecar alone --------------------------------------------------------
TOKEN = "the-port-token"


class TLSRawApp(RawApp):
    """RawApp serving TLS."""

    def __init__(self, reply: bytes, certificate):
        super().__init__(reply)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certificate.cert, certificate.key)

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


@pytest.fixture
async def sidecar():
    sidecar = Sidecar("api-secret", upstream_timeout=5)
    server = await serve(sidecar, "127.0.0.1", 0)
    sidecar.port = server.sockets[0].getsockname()[1]
    yield sidecar
    server.close()
    sidecar.pool.close_all()


def route(user: str, scheme: str, port: int) -> tuple[str, dict]:
    data = {"target": f"{scheme}://127.0.0.1:{port}", "access": "restricted", "username": user}
    return f"/ports/{user}/5000", {**data, "token_sha256": hash_token(TOKEN)}


async def two_requests(sidecar, first: str, second: str) -> tuple[bytes, bytes]:
    """Two requests, each on a keep-alive connection of its own: the first's connection to
    the app goes back to the pool before the second is sent."""
    answers = []
    for user in (first, second):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(f"GET /ports/{user}/5000/ HTTP/1.1\r\nHost: h\r\nX-Proxy-Token: {TOKEN}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        answers.append(head + await reader.readexactly(length))
        writer.close()
    return answers[0], answers[1]


async def test_a_pooled_tls_connection_never_carries_a_plain_routes_request(sidecar, certificate):
    app = await TLSRawApp(ok_reply(b"over tls"), certificate).start()
    sidecar.table.set(*route("alice", "https", app.port))
    sidecar.table.set(*route("mallory", "http", app.port))
    tls, plain = await two_requests(sidecar, "alice", "mallory")
    assert tls.startswith(b"HTTP/1.1 200") and tls.endswith(b"over tls")
    assert plain.startswith(b"HTTP/1.1 502") and b"If it serves HTTPS" in plain, plain
    app.server.close()


async def test_a_pooled_plain_connection_never_carries_a_tls_routes_request(sidecar):
    app = await RawApp(ok_reply(b"plain")).start()
    sidecar.table.set(*route("alice", "http", app.port))
    sidecar.table.set(*route("mallory", "https", app.port))
    plain, tls = await two_requests(sidecar, "alice", "mallory")
    assert plain.startswith(b"HTTP/1.1 200") and plain.endswith(b"plain")
    assert tls.startswith(b"HTTP/1.1 502") and b"does not speak HTTPS" in tls, tls
    app.server.close()


async def test_no_byte_of_a_handshake_reaches_another_users_listener(sidecar):
    """On a shared host (a route with a uid) TLS begins only once the listener is known to
    be the route's user's: a listener of anyone else's gets no ClientHello either."""
    app = await RawApp(ok_reply()).start()  # this process's listener, not uid 65534's
    key, data = route("alice", "https", app.port)
    sidecar.table.set(key, {**data, "uid": 65534})
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(f"GET /ports/alice/5000/ HTTP/1.1\r\nHost: h\r\nX-Proxy-Token: {TOKEN}\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(65536), 15)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 502") and b"another user's" in answer, answer
    await asyncio.sleep(0.2)
    assert app.received == b"", "bytes of a TLS handshake reached another user's listener"
    app.server.close()


# ---- Traefik -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def traefik_hub(make_hub, apps):
    return make_hub([{"port": apps["tls"].port, "protocol": "https"}], name="traefik", hub_class=TraefikHub)


async def test_behind_traefik_too(traefik_hub, apps):
    """Traefik sends every port to the sidecar: the same TLS hop, GET and websocket."""
    hub, app = traefik_hub, apps["tls"]
    api_token = hub.user_token("bob")
    hub.spawn("bob")
    token = hub.proxytoken(api_token, "POST", content="random").json()
    assert hub.port_routes()[f"/ports/bob/{app.port}/"]["target"] == hub.sidecar_url
    response = httpx.get(f"{hub.url}/ports/bob/{app.port}/t", headers={"X-Proxy-Token": token}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["scheme"] == "https" and response.json()["path"] == f"/ports/bob/{app.port}/t"
    assert httpx.get(f"{hub.url}/ports/bob/{app.port}/t", timeout=60).status_code == 403
    ws_url = f"{hub.url}/ports/bob/{app.port}/ws".replace("http://", "ws://")
    conn = await websocket_connect(HTTPRequest(ws_url, headers={"X-Proxy-Token": token}))
    await conn.write_message("through traefik")
    assert await conn.read_message() == "through traefik"
    conn.close()
