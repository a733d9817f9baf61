"""The sidecar against what an adversarial review tried, from the attacker's side, through a
real hub, CHP and sidecar to real apps (and a real Chromium where the browser matters).

- a sibling port's page posting to, or framing, a port where its owner has a hub login (CSRF);
- wrong tokens from one shared address locking its owner out; clients behind a front proxy;
- an app's own CORS headers passing a port whose CORS policy is the sidecar's;
- hub cookies set in a websocket's 101; ``wss`` not counted as secure;
- ``Connection: X-Forwarded-For`` hiding the client from the app;
- a token in the query leaking on through Referer;
- forged lines in the log; a non-idempotent request sent twice;
- idle connections straight to the sidecar kept forever; another process on the sidecar's port.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import socketserver
import threading
import time
from urllib.parse import quote, unquote

import httpx
import pytest

from jhproxy_routes.sidecar.login import session_cookie_name
from tests.rig import ADMIN_TOKEN, browser_login, free_port, wait_for

EVIL = "https://evil.example"
TRUSTED = "https://trusted.example"


class ScriptedApp:
    """An app on a real port whose answers attack the sidecar: CORS headers of its own, hub
    cookies in a websocket's 101, a Referrer-Policy, HTML pages of an attacker, and a
    connection it closes after the request (on ``/flaky/`` paths, from the second request
    of a connection on). It records every request it reads: (method, path, headers, n-th
    request of its connection)."""

    def __init__(self):
        self.received: list[dict] = []
        app = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                count = 0
                while True:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = self.rfile.readline()
                        if not line:
                            return
                        head += line
                    count += 1
                    lines = head.decode("latin-1").split("\r\n")
                    method, target, _ = lines[0].split(" ", 2)
                    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
                    get = {k.lower(): v for k, v in headers}.get
                    if int(get("content-length") or 0):
                        self.rfile.read(int(get("content-length")))
                    path = target.partition("?")[0]
                    app.received.append(
                        {"method": method, "path": path, "query": target.partition("?")[2], "headers": headers, "nth": count}
                    )
                    if "/flaky/" in path and count > 1:
                        return  # read, then gone without an answer
                    if get("upgrade", "").lower() == "websocket":
                        self.wfile.write(
                            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                            b"Set-Cookie: jupyterhub-hub-login=planted; Path=/hub/\r\n"
                            b"Set-Cookie: jhproxy-routes-session-0123456789abcdef=planted; Path=/\r\n"
                            b"Set-Cookie: app-cookie=fine; Path=/\r\n\r\n"
                        )
                        return
                    self.wfile.write(app.answer(method, path, target.partition("?")[2], get))

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def answer(method: str, path: str, query: str, get) -> bytes:
        extra = ["Referrer-Policy: unsafe-url"]
        body, kind = json.dumps({"method": method, "path": path}).encode(), "application/json"
        if get("origin"):  # CORS of the app's own, for whoever asks
            extra += [f"Access-Control-Allow-Origin: {get('origin')}", "Access-Control-Allow-Credentials: true"]
        target = unquote(query.partition("target=")[2])
        if path == "/attack-form":
            body, kind = (
                (
                    f'<form method="POST" action="{target}"><input name="x" value="1"></form>'
                    "<script>document.forms[0].submit()</script>"
                ).encode(),
                "text/html",
            )
        elif path == "/attack-frame":
            body, kind = f'<iframe id="f" src="{target}"></iframe>'.encode(), "text/html"
        head = ["HTTP/1.1 200 OK", f"Content-Type: {kind}", f"Content-Length: {len(body)}", *extra]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def paths(self, method: str | None = None) -> list[str]:
        return [r["path"] for r in self.received if method is None or r["method"] == method]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def scripted():
    app = ScriptedApp()
    yield app
    app.stop()


# ---- path routes: one hub ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def echo(make_app):
    return make_app()


@pytest.fixture(scope="module")
def hub(make_hub, echo, scripted):
    config = f"""
c.PortRoutes.default_startup_behavior = "random"
c.PortRoutes.cors_origins = [{TRUSTED!r}]
c.PortRoutes.trusted_proxies = ["127.0.0.1"]
c.JupyterHub.public_url = f"http://127.0.0.1:{{c.JupyterHub.port}}"
"""
    hub = make_hub(
        [{"port": echo.port, "name": "echo"}, {"port": scripted.port, "name": "scripted", "strip_prefix": True}], config
    )
    hub.user_token("alice")
    hub.spawn("alice")
    return hub


@pytest.fixture(scope="module")
def token(hub):
    response = hub.proxytoken(hub.user_token("alice"))
    assert response.status_code == 200, response.text
    return response.json()


def echo_path(echo, rest: str = "") -> str:
    return f"/ports/alice/{echo.port}/{rest}"


def raw_exchange(port: int, raw: bytes, timeout: float = 15) -> bytes:
    """Send raw bytes; the answer's head (and whatever came with it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_wrong_tokens_from_a_shared_address_never_lock_the_owner_out(hub, echo, token):
    """Item 3: ten junk tokens from the address many clients share (a NAT): the owner's right
    token still gets in; the junk is still counted and refused with 429. Behind a trusted front
    proxy, each client behind it is counted by its own address."""
    url = hub.url + echo_path(echo, "shared")
    behind_nat = {"X-Forwarded-For": "203.0.113.5"}  # what a trusted front proxy (127.0.0.1 here) appends
    statuses = [httpx.get(url, headers={**behind_nat, "X-Proxy-Token": "junk"}, timeout=30).status_code for _ in range(10)]
    assert statuses == [403] * 10
    limited = httpx.get(url, headers={**behind_nat, "X-Proxy-Token": "junk"}, timeout=30)
    assert limited.status_code == 429 and limited.elapsed.total_seconds() >= 0.9  # refused, and slowed
    owner = httpx.get(url, headers={**behind_nat, "X-Proxy-Token": token}, timeout=30)
    assert owner.status_code == 200, owner.text
    assert httpx.get(url, params={"proxy_token": token}, headers=behind_nat, timeout=30).status_code == 200
    # another client behind the same front proxy has its own count; a client naming a
    # trusted proxy as itself is still the untrusted hop before it
    assert httpx.get(url, headers={"X-Forwarded-For": "203.0.113.6", "X-Proxy-Token": "junk"}, timeout=30).status_code == 403
    forged = {"X-Forwarded-For": "203.0.113.5, 198.51.100.9, 127.0.0.1", "X-Proxy-Token": "junk"}
    assert httpx.get(url, headers=forged, timeout=30).status_code == 403  # 198.51.100.9, not 203.0.113.5
    audit = [json.loads(line) for line in (hub.dir / "jhproxy-routes-audit.jsonl").read_text().splitlines()]
    clients = {entry.get("client") for entry in audit if entry.get("path", "").endswith("/shared")}
    assert clients == {"203.0.113.5", "203.0.113.6", "198.51.100.9"}, clients


def test_app_cors_headers_never_pass_a_port_with_a_cors_policy(hub, scripted, token):
    """Item 4: the app answers every Origin with itself and credentials; the port's policy
    (cors_origins = [trusted]) decides: evil gets no CORS headers, trusted gets the sidecar's."""
    url = f"{hub.url}/ports/alice/{scripted.port}/cors"
    evil = httpx.get(url, headers={"Origin": EVIL, "X-Proxy-Token": token}, timeout=30)
    assert evil.status_code == 200 and scripted.paths()[-1] == "/cors"
    assert "access-control-allow-origin" not in evil.headers and "access-control-allow-credentials" not in evil.headers
    trusted = httpx.get(url, headers={"Origin": TRUSTED, "X-Proxy-Token": token}, timeout=30)
    assert trusted.headers.get_list("access-control-allow-origin") == [TRUSTED]
    assert "access-control-allow-credentials" not in trusted.headers


def ws_request(path: str, host: str, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    ).encode()


def test_cookies_of_the_hub_never_come_through_a_websocket_101(hub, scripted, token):
    """Item 6: the app's 101 sets the hub's login cookie and a sidecar session cookie: the
    browser gets neither (the app's own cookie passes, as in any answer)."""
    head = raw_exchange(
        hub.port, ws_request(f"/ports/alice/{scripted.port}/ws", f"127.0.0.1:{hub.port}", f"X-Proxy-Token: {token}\r\n")
    )
    head = head.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert head.startswith("http/1.1 101"), head
    assert "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in head and "app-cookie=fine" in head
    assert "jupyterhub-hub-login" not in head and "jhproxy-routes-session" not in head, head


def test_the_app_sees_the_client_whatever_connection_names(hub, echo, token):
    """Item 8: the client names the X-Forwarded-* headers in Connection: the app still gets
    the whole chain (the client, CHP's hop, the sidecar's) and the scheme and host."""
    hide = "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Prefix"
    before = len(echo.received())
    response = httpx.get(
        hub.url + echo_path(echo, "hidden"),
        timeout=30,
        headers={"Connection": hide, "X-Forwarded-For": "198.51.100.7", "X-Proxy-Token": token},
    )
    assert response.status_code == 200, response.text
    (seen,) = echo.received()[before:]
    headers = {k.lower(): v for k, v in seen["headers"]}
    chain = [entry.strip() for entry in headers["x-forwarded-for"].split(",")]
    assert chain[0] == "198.51.100.7" and len(chain) == 3, chain
    assert headers["x-forwarded-proto"].startswith("http") and headers["x-forwarded-host"] == f"127.0.0.1:{hub.port}"


def test_a_token_in_the_query_goes_no_further(hub, echo, scripted, token):
    """Item 9: the answer to a page opened with ?proxy_token= forbids Referers (replacing the
    app's own unsafe-url), and a Referer that carries the token anyway (from an older page)
    reaches no app with it."""
    page = httpx.get(f"{hub.url}/ports/alice/{scripted.port}/page", params={"proxy_token": token}, timeout=30)
    assert page.status_code == 200
    assert page.headers.get_list("referrer-policy") == ["no-referrer"]
    assert "proxy_token" not in scripted.received[-1]["query"]
    # without a token in the query, the app's policy stands
    with_header = httpx.get(f"{hub.url}/ports/alice/{scripted.port}/page", headers={"X-Proxy-Token": token}, timeout=30)
    assert with_header.headers.get_list("referrer-policy") == ["unsafe-url"]
    leaked = f"{hub.url}/ports/alice/{scripted.port}/page?a=1&proxy_token={quote(token)}&b=2"
    before = len(echo.received())
    assert (
        httpx.get(
            hub.url + echo_path(echo, "img.png"), headers={"Referer": leaked, "X-Proxy-Token": token}, timeout=30
        ).status_code
        == 200
    )
    (seen,) = echo.received()[before:]
    referer = dict((k.lower(), v) for k, v in seen["headers"])["referer"]
    assert token not in json.dumps(seen) and referer == f"{hub.url}/ports/alice/{scripted.port}/page?a=1&b=2", referer


def test_a_forged_log_line_stays_inside_its_own(hub):
    """Item 10: an OAuth callback whose error_description carries a line break and a line
    in the hub's log format: the log shows it escaped, never as a line of its own."""
    forged = "[I 2030-01-01 00:00:00.000 JupyterHub log:192] 200 POST /hub/api/users/alice/tokens (alice@10.0.0.1) 1.00ms"
    response = httpx.get(
        f"{hub.url}/services/jhproxy-routes/oauth_callback",
        params={"error": "x", "error_description": f"denied\n{forged}\r\n{forged}"},
        timeout=30,
    )
    assert response.status_code == 400
    wait_for(lambda: "the hub refused a login: denied" in hub.log(), 15, "the sidecar to log the refused login", hub.log_path)
    lines = hub.log().splitlines()
    assert not [line for line in lines if line.startswith(forged[:40])], "a forged line in the log"
    assert any("denied\\n[I 2030-01-01" in line for line in lines)


def test_a_non_idempotent_request_reaches_the_app_at_most_once(hub, scripted, token):
    """Retries: the app reads a request on a kept-alive connection and closes it without an
    answer. A DELETE or a body-less POST is not sent again (502); a GET is, on a new connection."""
    base = f"{hub.url}/ports/alice/{scripted.port}/flaky"
    auth = {"X-Proxy-Token": token}
    for method in ("DELETE", "POST"):
        assert httpx.get(f"{base}/warm", headers=auth, timeout=30).status_code == 200  # a pooled connection
        response = httpx.request(method, f"{base}/{method}", headers={**auth, "Content-Length": "0"}, timeout=30)
        sent = [r for r in scripted.received if r["path"] == f"/flaky/{method}"]
        assert response.status_code == 502, response.text
        assert len(sent) == 1 and sent[0]["nth"] == 2, sent  # on the pooled connection, once
    assert httpx.get(f"{base}/warm", headers=auth, timeout=30).status_code == 200
    again = httpx.get(f"{base}/again", headers=auth, timeout=30)  # read and dropped, then on a new connection
    assert again.status_code == 200
    assert [r["nth"] for r in scripted.received if r["path"] == "/flaky/again"] == [2, 1]


def test_a_sibling_page_cannot_use_the_login_on_path_routes(hub, echo, token):
    """Item 1 on path routes (one origin for all ports: the check tells the hub's origin from
    others; host templates tell ports apart): a form post, a fetch or a frame from another
    origin with alice's session cookie is refused; from the port's own origin, or with a
    token, it passes; opening the page at the top level passes."""
    alice = hub.login("alice")
    assert alice.get(echo_path(echo), follow_redirects=True).status_code == 200
    cookie = next(c for c in alice.cookies.jar if c.name == session_cookie_name(echo_path(echo).rstrip("/")))
    session = {"Cookie": f"{cookie.name}={cookie.value}"}
    url = hub.url + echo_path(echo, "api/delete")
    before = len(echo.received())
    cross_site = [
        (
            "POST",
            {
                "Origin": "http://evil.example",
                "Sec-Fetch-Site": "cross-site",
                "Sec-Fetch-Mode": "navigate",
                "Sec-Fetch-Dest": "document",
            },
        ),
        ("POST", {"Origin": "http://evil.example"}),  # an older browser
        ("POST", {}),  # no Origin at all: not the port's own
        ("GET", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}),
        (
            "GET",
            {
                "Sec-Fetch-Site": "cross-site",
                "Sec-Fetch-Mode": "cors",
                "Sec-Fetch-Dest": "empty",
                "Origin": "http://evil.example",
            },
        ),
        ("GET", {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}),
    ]
    for method, headers in cross_site:
        refused = httpx.request(method, url, headers={**session, **headers, "Accept": "text/html"}, timeout=30)
        assert refused.status_code == 403 and "came from another page than the port" in refused.text, (
            method,
            headers,
            refused.text[:300],
        )
    assert len(echo.received()) == before, "a cross-site request reached the app"
    own = {"Origin": hub.url, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
    assert httpx.post(url, headers={**session, **own}, timeout=30).status_code == 200
    top = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-User": "?1"}
    assert httpx.get(url, headers={**session, **top}, timeout=30).status_code == 200
    assert httpx.post(url, headers={"Origin": "http://evil.example", "X-Proxy-Token": token}, timeout=30).status_code == 200
    assert [r["method"] for r in echo.received()[before:]] == ["POST", "GET", "POST"]
    metrics = httpx.get(
        f"{hub.sidecar_url}/_jhproxy-routes/metrics", headers={"Authorization": f"token {ADMIN_TOKEN}"}, timeout=30
    )
    assert re.search(r'jhproxy_routes_sidecar_denied_total\{reason="cross-site login"\} 6\.0', metrics.text), metrics.text[-2000:]
    audit = [json.loads(line) for line in (hub.dir / "jhproxy-routes-audit.jsonl").read_text().splitlines()]
    refusals = [(e["method"], e["path"]) for e in audit if e.get("reason") == "cross-site login"]
    assert refusals == [(method, echo_path(echo, "api/delete")) for method, _ in cross_site], refusals


def test_a_login_without_fetch_metadata_gets_no_frame_from_elsewhere(hub, echo):
    """A browser that sends no Sec-Fetch-* (plain http hosts, older browsers) cannot tell a
    frame's navigation from a top-level one: an answer let through by the session then
    forbids framing by another origin (added to the app's own policy); a token's answer is
    left as it is. (What is neither a navigation nor from the port's own page: refused,
    tests/test_sibling_hosts.py.)"""
    alice = hub.login("alice")
    assert alice.get(echo_path(echo), follow_redirects=True).status_code == 200
    cookie = next(c for c in alice.cookies.jar if c.name == session_cookie_name(echo_path(echo).rstrip("/")))
    # a page navigation (over plain http, a frame's looks the same: Upgrade-Insecure-Requests)
    navigation = {"Cookie": f"{cookie.name}={cookie.value}", "Upgrade-Insecure-Requests": "1"}
    answer = httpx.get(hub.url + echo_path(echo, "page"), headers=navigation, timeout=30)
    assert answer.status_code == 200 and answer.headers.get("Content-Security-Policy") == "frame-ancestors 'self'"
    top = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    answer = httpx.get(hub.url + echo_path(echo, "page"), headers={"Cookie": f"{cookie.name}={cookie.value}", **top}, timeout=30)
    assert answer.status_code == 200 and "Content-Security-Policy" not in answer.headers


async def test_a_websocket_ends_when_its_token_is_revoked(hub, echo):
    """A websocket let in by a token does not outlive the token: changing the server's
    settings closes it, and the old token opens no new one."""
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    api_token = hub.user_token("alice")
    old = hub.proxytoken(api_token, "POST", content="random").json()
    url = (hub.url + echo_path(echo, "ws")).replace("http://", "ws://")
    conn = await websocket_connect(HTTPRequest(url, headers={"X-Proxy-Token": old}))
    conn.write_message("before")
    assert await conn.read_message() == "before"
    new = await asyncio.to_thread(lambda: hub.proxytoken(api_token, "POST", content="random").json())
    assert new != old
    assert await asyncio.wait_for(conn.read_message(), 15) is None, "the websocket outlived the token it came in with"
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(HTTPRequest(url, headers={"X-Proxy-Token": old}))
    assert refused.value.code == 403


async def test_websockets_held_open_push_no_one_out(make_hub, make_app):
    """A user holding many websockets open to their own port (more than the sidecar keeps idle
    connections) takes no connection from anyone else: other users' requests through CHP keep
    being answered, and every websocket still echoes."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    app = make_app()
    hub = make_hub(
        [app.port], 'c.PortRoutes.default_startup_behavior = "random"\nc.PortRoutes.max_idle_connections = 3', name="held"
    )
    tokens = {}
    for user in ("mallory", "alice"):
        api_token = hub.user_token(user)
        hub.spawn(user)
        tokens[user] = hub.proxytoken(api_token).json()
    url = f"{hub.url}/ports/mallory/{app.port}/ws".replace("http://", "ws://")
    sockets = [await websocket_connect(HTTPRequest(url, headers={"X-Proxy-Token": tokens["mallory"]})) for _ in range(12)]
    async with httpx.AsyncClient(timeout=30) as client:
        answers = [
            (await client.get(f"{hub.url}/ports/alice/{app.port}/x", headers={"X-Proxy-Token": tokens["alice"]})).status_code
            for _ in range(20)
        ]
    assert answers == [200] * 20
    for i, conn in enumerate(sockets):
        conn.write_message(f"still {i}")
        assert await asyncio.wait_for(conn.read_message(), 15) == f"still {i}"
        conn.close()


# ---- host routes (subdomain_host): ports are origins of their own, but one site ---------------
HUB_HOST = "hub.localhost"


@pytest.fixture(scope="module")
def team(make_app):
    return make_app()


@pytest.fixture(scope="module")
def subhub(make_hub, team, scripted):
    config = f"""
c.JupyterHub.subdomain_host = f"http://{HUB_HOST}:{{c.JupyterHub.port}}"
c.PortRoutes.route_template = "{{port}}--{{username}}.{{subdomain_host}}"
"""
    ports = [
        {"port": team.port, "name": "team", "access": "owner"},
        {"port": scripted.port, "name": "attack", "access": "public"},
    ]
    hub = make_hub(ports, config, name="subdomains")
    for user in ("alice", "mallory"):
        hub.user_token(user)
        hub.spawn(user)
    return hub


def port_origin(hub, app, user: str) -> str:
    return f"http://{app.port}--{user}.{HUB_HOST}:{hub.port}"


def logged_in_on_team(browser, hub, team):
    """Alice's browser: logged in at the hub, with a session on her owner-only team port."""
    context, page = browser_login(browser, f"http://{HUB_HOST}:{hub.port}", "alice")
    own = port_origin(hub, team, "alice")
    page.goto(f"{own}/start")
    page.wait_for_url(f"{own}/start")
    assert json.loads(page.locator("body").inner_text())["path"] == "/start"
    return context, page


def test_a_sibling_port_page_cannot_post_to_or_frame_a_port_with_a_session(browser, subhub, team, scripted):
    """Item 1 in Chromium: mallory's public port page auto-submits a form to alice's port, and
    frames it; alice's browser sends her SameSite=Lax session cookie (one site), the sidecar
    refuses both, and her app never sees them. Her own page's POST passes."""
    context, page = logged_in_on_team(browser, subhub, team)
    own = port_origin(subhub, team, "alice")
    attacker = port_origin(subhub, scripted, "mallory")
    before = len(team.received())
    page.goto(f"{attacker}/attack-form?target={quote(own + '/api/delete', safe='')}")
    page.wait_for_url(f"{own}/api/delete")
    assert "came from another page than the port" in page.content()
    page.goto(f"{attacker}/attack-frame?target={quote(own + '/framed', safe='')}")
    frame = page.frame_locator("#f")
    assert "came from another page than the port" in frame.locator("body").inner_text()
    # (the browser's own favicon request for the refused page is no attack)
    seen = lambda: [(r["method"], r["path"]) for r in team.received()[before:] if r["path"] != "/favicon.ico"]  # noqa: E731
    assert seen() == [], "a sibling's form or frame reached alice's app"
    # from the port's own page: a form and a fetch with the session pass
    page.goto(f"{own}/page")
    status = page.evaluate("fetch('/api/own', {method: 'POST', body: 'x'}).then(r => r.status)")
    assert status == 200
    page.evaluate("""() => { const f = document.createElement('form'); f.method = 'POST'; f.action = '/api/form';
                             document.body.appendChild(f); f.submit(); }""")
    page.wait_for_url(f"{own}/api/form")
    assert json.loads(page.locator("body").inner_text())["method"] == "POST"
    assert seen() == [("GET", "/page"), ("POST", "/api/own"), ("POST", "/api/form")]
    context.close()


def test_wss_counts_as_secure_for_the_session_cookie(browser, subhub, team):
    """Item 7: behind TLS, CHP tells websockets ``X-Forwarded-Proto: wss``. The owner's
    ``__Host-`` session works there as on https; a plain-named one (which a sibling host could
    plant) does not."""
    context, page = logged_in_on_team(browser, subhub, team)
    session = next(c for c in context.cookies() if c["name"].startswith("jhproxy-routes-session-"))
    context.close()
    host = f"{team.port}--alice.{HUB_HOST}:{subhub.port}"
    origin = f"Origin: https://{host}\r\n"  # the page's origin behind TLS

    def upgrade(cookie: str, proto: str) -> bytes:
        extra = f"{origin}X-Forwarded-Proto: {proto}\r\nCookie: {cookie}={session['value']}\r\n"
        return raw_exchange(subhub.port, ws_request("/ws", host, extra)).split(b"\r\n", 1)[0]

    for proto in ("wss", "https"):
        assert b" 101 " in upgrade("__Host-" + session["name"], proto), proto
        assert b" 403 " in upgrade(session["name"], proto), proto


def test_another_process_on_the_sidecars_port_is_named_not_fed(make_hub, echo):
    """The sidecar's port is taken by another program (here: a web server that answers
    everything with a page). The sidecar says so in one line and exits; the route manager
    says the process there is not this hub's sidecar, and sends it no routes as if it were."""
    import http.server

    class Page(http.server.BaseHTTPRequestHandler):
        def answer(self):
            body = b"<html>someone else's server</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, *args):
            pass

    hub = make_hub([echo.port], "c.PortRoutes.default_startup_behavior = 'random'", name="taken", start=False)
    other = http.server.ThreadingHTTPServer(("127.0.0.1", hub.sidecar_port), Page)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        hub.start()
        hub.user_token("alice")
        hub.spawn("alice")
        stranger = (
            f"the process at {hub.sidecar_url} is not this hub's jhproxy-routes sidecar (it answered HTTP 200 without JSON)"
        )
        wait_for(lambda: stranger in hub.log(), 30, "the route manager to name the stranger", hub.log_path)
        log = hub.log()
        listen = [line for line in log.splitlines() if "cannot listen on" in line]
        assert listen and f"cannot listen on {hub.sidecar_url}" in listen[0] and "in use" in listen[0], listen
        assert "Traceback" not in log, log[-3000:]
        # no retry storm: no retries, and one line for all the reconciliations (every 2 s here)
        first = hub.log().index(stranger)
        wait_for(
            lambda: hub.log()[first:].count("GET /api/routes") >= 3,
            30,
            "three more reconciliations (CHP's table read)",
            hub.log_path,
        )
        log = hub.log()
        assert "retrying" not in log
        assert len([line for line in log.splitlines() if "[E " in line and "left out of this reconciliation" in line]) == 1
    finally:
        other.shutdown()
        other.server_close()


def test_idle_connections_straight_to_the_sidecar_are_bounded(make_hub, make_app):
    """Connections opened straight to the sidecar and left idle: beyond the cap the longest
    idle ones are closed, after the idle time all are; CHP's own connections are not refused
    at any time, its requests all answered (no 502/503), also after an idle pause."""
    app = make_app()
    config = """
c.PortRoutes.default_startup_behavior = "random"
c.PortRoutes.client_timeout = 1
c.PortRoutes.client_idle_timeout = 3
c.PortRoutes.max_idle_connections = 20
"""
    hub = make_hub([app.port], config, name="idle")
    hub.user_token("alice")
    hub.spawn("alice")
    token = hub.proxytoken(hub.user_token("alice")).json()
    url = f"{hub.url}/ports/alice/{app.port}/busy"
    statuses, stop = [], threading.Event()

    def traffic():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.get(url, headers={"X-Proxy-Token": token}).status_code)
                time.sleep(0.05)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        wait_for(lambda: len(statuses) >= 5, 30, "traffic through CHP")
        idle = []
        for _ in range(30):
            idle.append(socket.create_connection(("127.0.0.1", hub.sidecar_port), timeout=10))
            time.sleep(0.02)

        def closed(sock) -> bool:
            sock.settimeout(0.05)
            try:
                return sock.recv(1) == b""
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True

        # the oldest made room for the newest
        wait_for(lambda: sum(closed(sock) for sock in idle) >= 10, 15, "connections beyond the cap to be closed")
        assert not any(closed(sock) for sock in idle[-5:])
        wait_for(lambda: all(closed(sock) for sock in idle), 15, "the idle connections to be closed")
    finally:
        stop.set()
        worker.join(60)
    for sock in idle:
        sock.close()
    assert statuses and set(statuses) == {200}, statuses
    time.sleep(5)  # CHP's own pooled connections idle out too; its next requests open new ones
    assert [httpx.get(url, headers={"X-Proxy-Token": token}, timeout=30).status_code for _ in range(5)] == [200] * 5


def test_client_address_believes_only_trusted_proxies():
    """Pure logic of ``trusted_proxies``: the rightmost X-Forwarded-For entry that is not a
    trusted proxy; CHP's own (last) entry is the connection's client when nothing is trusted."""
    from jhproxy_routes.http1 import parse_request_head
    from jhproxy_routes.sidecar.access import client_address, parse_networks

    def client(trusted: str, *values: str) -> str:
        head = "GET / HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-Forwarded-For: {v}\r\n" for v in values) + "\r\n"
        return client_address(parse_request_head(head.encode()), "192.0.2.1", parse_networks(trusted.split(",")))

    assert client("", "6.6.6.6, 10.0.0.5") == "10.0.0.5"  # nothing trusted: the address CHP saw
    assert client("") == "192.0.2.1"
    assert client("10.0.0.0/8", "6.6.6.6, 10.0.0.5") == "6.6.6.6"
    assert client("10.0.0.0/8, 127.0.0.1", "1.1.1.1, 6.6.6.6, 10.0.0.7", "10.0.0.5, 127.0.0.1") == "6.6.6.6"
    assert client("10.0.0.0/8", "10.0.0.9, 10.0.0.5") == "10.0.0.9"  # all trusted: the first
    assert client("10.0.0.0/8", "unknown, 10.0.0.5") == "unknown"
    assert client("::1, 10.0.0.0/8", "2001:db8::7, ::1") == "2001:db8::7"
    # a dual-stack CHP writes IPv4 as IPv6 (::ffff:...); front proxies may add a port
    assert client("10.0.0.0/8", "6.6.6.6, ::ffff:10.1.2.3") == "6.6.6.6"
    assert client("10.0.0.0/8", "6.6.6.6:4444, 10.0.0.5:5555") == "6.6.6.6"
    assert client("10.0.0.0/8", "[2001:db8::7]:443, [::ffff:10.0.0.5]:80") == "2001:db8::7"


def test_another_hubs_sidecar_is_named_too(tmp_path):
    """A real sidecar that has another secret (another hub's, or one left over from a hub run
    with another random token) refuses the hub's token: the route manager's API says that the
    process there is not this hub's sidecar, for reads and bulk changes alike."""
    import asyncio
    import concurrent.futures
    import os
    import subprocess
    import sys

    from jhproxy_routes.routeapi import RouteAPIError, SidecarRouteAPI
    from tests.rig import port_open

    port = free_port()
    env = {**os.environ, "JHPROXY_ROUTES_SIDECAR_TOKEN": "another-hubs-secret", "JHPROXY_ROUTES_AUDIT_LOG": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jhproxy_routes.sidecar", "--port", str(port)],
        env=env,
        stdout=(tmp_path / "sidecar.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: port_open(port), 30, "the other sidecar", tmp_path / "sidecar.log")

        async def ask():
            api = SidecarRouteAPI("sidecar", f"http://127.0.0.1:{port}/_jhproxy-routes/", "this-hubs-secret", retry_timeout=5)
            try:
                for call in (api.get_all(), api.add_many({"/ports/alice/5000/": {"target": "http://127.0.0.1:5000"}})):
                    with pytest.raises(RouteAPIError) as refused:
                        await call
                    assert (
                        f"the process at http://127.0.0.1:{port} is not this hub's jhproxy-routes sidecar (it refuses the hub's token)"
                        in str(refused.value)
                    )
            finally:
                await api.aclose()

        # in a thread of its own: Playwright's sync API keeps an event loop running in this one
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, ask()).result()
    finally:
        proc.terminate()
        proc.wait(10)
