"""Review probes (attacker's side) against the in-server API and the report endpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.rig import free_port, wait_for

EXTRA = """
c.JupyterHub.load_roles.append({"name": "user", "scopes": ["self", "shares!user", "read:users:name", "read:groups:name"]})
"""


@pytest.fixture(scope="module")
def ports():
    return {"allowed": free_port()}


@pytest.fixture(scope="module")
def hub(make_hub, ports):
    return make_hub([ports["allowed"]], EXTRA)


@pytest.fixture(scope="module")
def tokens(hub):
    found = {user: hub.user_token(user) for user in ("alice", "bob")}
    hub.spawn("alice")
    hub.spawn("alice", "b")
    return found


def server_env(name: str) -> dict:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(line.split("=", 1) for line in (entry / "environ").read_bytes().decode().split("\0") if "=" in line)
        except OSError:
            continue
        if env.get("JUPYTERHUB_USER") == "alice" and env.get("JUPYTERHUB_SERVER_NAME") == name and "JUPYTERHUB_API_TOKEN" in env:
            if b"jupyterhub-singleuser" in (entry / "cmdline").read_bytes():
                return env
    raise AssertionError(f"no server alice/{name}")


def report(hub, token, server="", body=None):
    body = body or {"ports": [{"port": 1234, "process": "x"}]}
    return hub.api("POST", f"/jhproxy-routes/listening/{server}", token=token, json=body)


def test_named_servers_token(hub, tokens, ports):
    b = server_env("b")["JUPYTERHUB_API_TOKEN"]
    default = server_env("")["JUPYTERHUB_API_TOKEN"]
    r1 = report(hub, b, "")
    r2 = report(hub, b, "b")
    r3 = hub.proxytoken(b, params={"format": "full"})
    r4 = hub.proxytoken(b, "POST", json={"ports": {str(ports["allowed"]): "public"}})
    r5 = report(hub, default, "b")
    print("b->'' report", r1.status_code, r1.text[:200])
    print("b->b report", r2.status_code)
    print("b->'' settings", r3.status_code, r3.text[:200])
    print("b->'' change", r4.status_code, r4.text[:200])
    print("''->b report", r5.status_code)
    assert r1.status_code == 403 and r3.status_code == 403 and r4.status_code == 403 and r5.status_code == 403
    assert r2.status_code == 204


def test_limited_tokens(hub, tokens):
    for scopes in (
        ["access:servers!server=alice/"],
        ["read:users:name!user=alice"],
        ["users:activity!user=alice"],
        ["custom:jhproxy-routes:tokens!server=alice/b"],
    ):
        t = hub.api("POST", "/users/alice/tokens", token=tokens["alice"], json={"scopes": scopes})
        assert t.status_code == 201, t.text
        r = report(hub, t.json()["token"], "")
        print(scopes, r.status_code)
        assert r.status_code == 403, (scopes, r.text)


def test_huge_report(hub, tokens):
    body = json.dumps({"ports": [{"port": 1, "process": "x" * (30 << 20)}]}).encode()
    began = time.monotonic()
    r = httpx.post(
        f"{hub.url}/hub/api/jhproxy-routes/listening/",
        content=body,
        headers={"Authorization": f"token {tokens['alice']}"},
        timeout=120,
    )
    print("30 MiB report:", r.status_code, round(time.monotonic() - began, 2), "s")
    # many ports, within MAX_PORTS
    body = {"ports": [{"port": p, "process": "y" * 200, "loopback_only": True} for p in range(1, 1001)]}
    r = report(hub, tokens["alice"], "", body)
    print("1000-port report:", r.status_code)
    r = report(hub, tokens["alice"], "", {"ports": [{"port": p} for p in range(1, 1002)]})
    print("1001-port report:", r.status_code)


def test_shared_user_in_server_api(hub, tokens, ports):
    shared = hub.api("POST", "/shares/alice/", token=tokens["alice"], json={"user": "bob"})
    print("share:", shared.status_code, shared.text[:200])
    bob = tokens["bob"]
    url = f"{hub.url}/user/alice/jhproxy-routes/ports"
    h = {"Authorization": f"token {bob}"}
    own = hub.proxytoken(tokens["alice"], "POST", json={"mode": "random"})
    print("alice random:", own.status_code)

    def get():
        r = httpx.get(url, headers=h, timeout=30)
        return r if r.status_code == 200 else None

    r = wait_for(get, 20, "bob in alice's panel")
    print("bob GET alice panel:", r.status_code, "token:", r.json().get("token"))
    r = httpx.post(url, headers=h, json={"ports": {str(ports["allowed"]): "public"}}, timeout=30)
    print("bob POST alice panel:", r.status_code, r.text[:300])
    hub_view = hub.proxytoken(bob, params={"format": "full"})
    print("bob at the hub's token API (his own server):", hub_view.status_code)
    terminals = httpx.post(f"{hub.url}/user/alice/api/terminals", headers=h, timeout=30)
    print("bob opens a terminal in alice's server:", terminals.status_code)


def test_cookie_csrf_and_cross_origin(hub, tokens, ports):
    client = hub.login("alice")
    client.follow_redirects = True
    tree = client.get("/user/alice/files/nosuch.txt")
    print(
        "alice /user/alice/:",
        tree.status_code,
        tree.url,
        [(h.status_code, str(h.url)[:90]) for h in tree.history],
        tree.text[:200],
    )
    lab = client.get("/user/alice/api/status", headers={"Accept": "application/json"})
    print("alice cookie status:", lab.status_code, [(c.name, c.path) for c in client.cookies.jar])
    url = "/user/alice/jhproxy-routes/ports"
    r = client.get(url, headers={"Accept": "application/json"})
    print("GET same-origin cookie:", r.status_code)
    r = client.get(url, headers={"Origin": "http://evil.example", "Accept": "*/*"})
    print(
        "GET cross-origin cookie:",
        r.status_code,
        dict((k, v) for k, v in r.headers.items() if k.lower().startswith("access-control")),
    )
    r = client.get(url, headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Origin": "http://evil.example"})
    print("GET cross-site fetch-metadata:", r.status_code)
    body = json.dumps({"ports": {str(ports["allowed"]): "public"}})
    for name, headers in (
        ("no xsrf", {"Content-Type": "application/json"}),
        ("text/plain form", {"Content-Type": "text/plain", "Origin": "http://evil.example"}),
        ("same-origin no xsrf", {"Content-Type": "application/json", "Origin": hub.url, "Sec-Fetch-Site": "same-origin"}),
        ("referer only", {"Content-Type": "application/json", "Referer": hub.url + "/user/alice/lab"}),
    ):
        r = client.post(url, content=body, headers=headers)
        print("POST", name, r.status_code, r.text[:120])
    xsrf = client.cookies.get("_xsrf", path="/user/alice/")
    r = client.post(url, content=body, headers={"X-XSRFToken": xsrf or "", "Content-Type": "application/json"})
    print("POST with xsrf:", r.status_code)


def test_rebase_host(hub, tokens, ports):
    url = f"{hub.url}/user/alice/jhproxy-routes/ports"
    for host, proto in (("evil.example", "https"), ("evil.example/x?", "http"), ("127.0.0.1@evil.example", "http")):
        r = httpx.get(
            url, headers={"Authorization": f"token {tokens['alice']}", "Host": host, "X-Forwarded-Proto": proto}, timeout=30
        )
        urls = [e.get("url") for e in r.json()["ports"]] if r.status_code == 200 else r.text[:200]
        print("Host", host, r.status_code, urls, r.headers.get("Cache-Control"))
