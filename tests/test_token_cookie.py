"""The port token traded for a cookie of the port (``sidecar/token_cookie.py``), against a
real hub, CHP and sidecar, in Chromium and as an attacker would try it.

- A browser that opens a port with ``?proxy_token=`` is sent to the same URL without it, with
  a cookie of that route (its path, HttpOnly, SameSite=Lax): the app's own requests after the
  first page get in, the cookie never reaches the app, the token leaves the address bar.
- The cookie is worth nothing on another port of the same server (same token), on another
  user's port, from another site (a cross-site POST or fetch), after the token was rotated
  or disabled.
- A script (no fetch metadata) with the token in the query gets the app's answer, as before;
  a wrong token in a navigation is refused, never traded.
"""

from __future__ import annotations

import json

import httpx
import pytest

from jhproxy_routes.sidecar.table import RouteTable
from jhproxy_routes.sidecar.token_cookie import TokenCookies
from jhproxy_routes.tokens import hash_token
from tests.rig import assert_no_credentials, cookie_header, sibling_ports
from tests.tables import route

# a page of the port opened again, as a browser without fetch metadata sends it (plain http)
PAGE = {"Upgrade-Insecure-Requests": "1"}
NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none", "Accept": "text/html"}
CROSS_SITE = {
    "Origin": "http://evil.example",
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Dest": "empty",
}


@pytest.fixture(scope="module")
def apps(make_app):
    port, sibling = sibling_ports()
    return {"a": make_app(), "b": make_app(), "mallory": make_app(), "slashless": make_app(port), "sibling": make_app(sibling)}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    ports = [apps["a"].port, apps["b"].port, apps["mallory"].port, apps["slashless"].port]
    # direct from CHP (no sidecar): the app sees the browser's Cookie header as sent
    ports.append({"port": apps["sibling"].port, "access": "public", "scope_cookies": False})
    hub = make_hub(ports, "c.PortRoutes.default_startup_behavior = 'random'\n")
    for user in ("alice", "mallory"):
        hub.user_token(user)
        hub.spawn(user)
    return hub


@pytest.fixture(scope="module")
def tokens(hub):
    return {user: hub.proxytoken(hub.user_token(user), "POST", content="random").json() for user in ("alice", "mallory")}


def path_of(apps, name: str, user: str = "alice") -> str:
    return f"/ports/{user}/{apps[name].port}"


def traded(hub, path: str, token: str) -> tuple[str, str]:
    """The token cookie (name, value) a navigation with the token gets."""
    response = hub.get(f"{path}/page", params={"proxy_token": token}, headers=NAVIGATE)
    assert response.status_code == 302, response.text
    name, _, value = response.headers["set-cookie"].partition(";")[0].partition("=")
    assert name.startswith("jhproxy-routes-token-"), response.headers
    return name, value


def test_a_browser_keeps_the_token_in_a_cookie_of_the_port(browser, hub, apps, tokens):
    context = browser.new_context(base_url=hub.url)
    page = context.new_page()
    path = path_of(apps, "a")
    before = len(apps["a"].received())
    response = page.goto(f"{path}/first?x=1&proxy_token={tokens['alice']}&y=2")
    assert response.status == 200 and page.url == f"{hub.url}{path}/first?x=1&y=2"  # the token left the address
    assert json.loads(page.locator("body").inner_text())["query"] == "x=1&y=2"
    [cookie] = [c for c in context.cookies() if c["name"].startswith("jhproxy-routes-token-")]
    assert (cookie["path"], cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (path, True, "Lax", False)
    assert cookie["domain"] == "127.0.0.1"  # host-only
    # the page's own requests after it: a fetch and a websocket, with no token
    echoed = page.evaluate("u => fetch(u).then(r => r.json())", f"{path}/api/data")
    assert echoed["path"] == f"{path}/api/data"
    reply = page.evaluate(
        """u => new Promise((ok, fail) => { const ws = new WebSocket(u);
             ws.onopen = () => ws.send("hi"); ws.onmessage = e => ok(e.data); ws.onerror = () => fail("refused"); })""",
        f"ws://127.0.0.1:{hub.port}{path}/ws",
    )
    assert reply == "hi"
    posted = page.evaluate("u => fetch(u, {method: 'POST', body: 'x'}).then(r => r.status)", f"{path}/api/save")
    assert posted == 200  # a same-origin POST of the port's own page
    seen = apps["a"].received()[before:]
    assert len(seen) >= 4
    assert_no_credentials(seen, [tokens["alice"], cookie["value"]])
    # the other port of the same server, same token: the cookie is not sent, and not taken
    status = page.evaluate("u => fetch(u).then(r => r.status)", f"{path_of(apps, 'b')}/api")
    assert status == 403
    context.close()


def test_the_slashless_url_and_a_sibling_port(browser, hub, apps, tokens):
    """A port opened as apps print it (no trailing slash) with the token: the cookie has the
    route's path without the slash, and a sibling whose path has it as a string prefix
    (``/ports/alice/P`` and ``/ports/alice/P2``) never gets it."""
    context = browser.new_context(base_url=hub.url)
    page = context.new_page()
    path, sibling = path_of(apps, "slashless"), path_of(apps, "sibling")
    assert sibling.startswith(path) and sibling != path
    response = page.goto(f"{path}?proxy_token={tokens['alice']}")  # on to the slash form, the token traded
    assert response.status == 200 and page.url == hub.url + path + "/"
    assert json.loads(page.locator("body").inner_text())["path"] == path + "/"
    [cookie] = [c for c in context.cookies() if c["name"].startswith("jhproxy-routes-token-")]
    assert cookie["path"] == path
    assert page.evaluate("u => fetch(u).then(r => r.status)", path + "/below") == 200
    before = len(apps["sibling"].received())
    page.goto(sibling)
    page.goto(sibling + "/")
    seen = apps["sibling"].received()[before:]
    assert len(seen) == 2 and all("jhproxy-routes" not in cookie_header(e) for e in seen), seen
    context.close()


def test_the_cookie_is_worth_nothing_on_another_port(hub, apps, tokens):
    name, value = traded(hub, path_of(apps, "a"), tokens["alice"])
    own = hub.get(f"{path_of(apps, 'a')}/x", headers={"Cookie": f"{name}={value}", **PAGE})
    assert own.status_code == 200 and own.json()["path"] == f"{path_of(apps, 'a')}/x"
    other_name, _ = traded(hub, path_of(apps, "b"), tokens["alice"])
    assert other_name != name
    for path in (path_of(apps, "b"), path_of(apps, "mallory", "mallory")):  # same token, another user's
        for cookie in (f"{name}={value}", f"{other_name}={value}"):
            response = hub.get(f"{path}/x", headers={"Cookie": cookie, **PAGE})
            assert response.status_code == 403, (path, cookie, response.text)


def test_another_site_cannot_use_the_cookie(hub, apps, tokens):
    path = path_of(apps, "a")
    name, value = traded(hub, path, tokens["alice"])
    before = len(apps["a"].received())
    cookie = {"Cookie": f"{name}={value}"}
    post = httpx.post(f"{hub.url}{path}/delete", headers={**cookie, **CROSS_SITE}, content="x")
    assert post.status_code == 403 and "token's cookie" in post.json()["message"]
    fetch = hub.get(f"{path}/secret", headers={**cookie, **CROSS_SITE})
    assert fetch.status_code == 403
    framed = hub.get(
        f"{path}/", headers={**cookie, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}
    )
    assert framed.status_code == 403
    assert len(apps["a"].received()) == before  # none of them reached the app
    # a link from another site, opened at the top: allowed, as the hub login is (SameSite=Lax)
    link = hub.get(f"{path}/", headers={**cookie, **NAVIGATE, "Sec-Fetch-Site": "cross-site"})
    assert link.status_code == 200


def test_scripts_and_frames_keep_the_token_as_before(browser, hub, apps, tokens):
    path = path_of(apps, "a")
    script = hub.get(f"{path}/x", params={"proxy_token": tokens["alice"]})  # no fetch metadata
    assert script.status_code == 200 and script.json()["query"] == ""
    assert not [c for c in script.headers.get_list("set-cookie") if "jhproxy" in c]
    assert script.headers["referrer-policy"] == "no-referrer"
    for mode, dest in (("navigate", "iframe"), ("no-cors", "document"), ("cors", "empty")):  # no top-level page
        framed = hub.get(
            f"{path}/x", params={"proxy_token": tokens["alice"]}, headers={"Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": dest}
        )
        assert framed.status_code == 200 and framed.json()["path"] == f"{path}/x", (mode, dest)
    context = browser.new_context(base_url=hub.url)
    page = context.new_page()
    page.goto("/hub/login")  # a page of the hub's origin, then a script of it with the token
    fetched = page.evaluate(
        "u => fetch(u).then(r => r.json().then(j => [r.status, r.redirected, j.query]))",
        f"{path}/y?proxy_token={tokens['alice']}",
    )
    assert fetched == [200, False, ""]
    assert not [c for c in context.cookies() if c["name"].startswith("jhproxy-routes-token-")]
    context.close()
    # a wrong token in a navigation: refused, never traded
    wrong = hub.get(f"{path}/x", params={"proxy_token": "wrong"}, headers={**NAVIGATE, "Accept": "application/json"})
    assert wrong.status_code == 403 and "set-cookie" not in wrong.headers
    # behind HTTPS the cookie is Secure
    secure = hub.get(f"{path}/x", params={"proxy_token": tokens["alice"]}, headers={**NAVIGATE, "X-Forwarded-Proto": "https"})
    assert secure.status_code == 302 and secure.headers["set-cookie"].endswith("; Secure")


def test_a_new_or_disabled_token_ends_the_cookie(hub, apps, tokens):
    path = path_of(apps, "a")
    name, value = traded(hub, path, tokens["alice"])
    cookie = {"Cookie": f"{name}={value}", **PAGE}
    by_cookie = hub.get(f"{path}/x", headers=cookie)
    assert by_cookie.status_code == 200
    assert "Cookie" in by_cookie.headers.get_list("vary"), by_cookie.headers  # no shared cache serves it to others
    alice = hub.user_token("alice")
    new = hub.proxytoken(alice, "POST", content="random").json()
    assert new != tokens["alice"]
    refused = hub.get(f"{path}/x", headers=cookie)
    assert refused.status_code == 403, refused.text
    new_name, new_value = traded(hub, path, new)
    assert (new_name, new_value != value) == (name, True)
    assert hub.get(f"{path}/x", headers={"Cookie": f"{name}={new_value}", **PAGE}).status_code == 200
    hub.proxytoken(alice, "POST", content="disabled")
    assert hub.get(f"{path}/x", headers={"Cookie": f"{name}={new_value}", **PAGE}).status_code == 403
    tokens["alice"] = hub.proxytoken(alice, "POST", content="random").json()


def test_a_whole_hosts_cookie_behind_https_is_host_prefixed():
    """A port with a host of its own (``subdomain_host``) behind HTTPS: ``__Host-``, so no
    sibling port's host can plant one for it; the value holds for its route and token only."""
    table = RouteTable()
    restricted = {"access": "restricted", "username": "alice", "by_host": True}
    table.set("/5000--alice.hub.example", route(token_sha256=hash_token("t1"), **restricted))
    table.set("/5001--alice.hub.example", route(target="http://127.0.0.1:5001", token_sha256=hash_token("t1"), **restricted))
    port, _ = table.lookup("/", "5000--alice.hub.example")
    sibling, _ = table.lookup("/", "5001--alice.hub.example")
    cookies = TokenCookies("secret")
    location, set_cookie, *_ = cookies.exchange(port, "/x", "/", secure=True)
    assert location == ("Location", "/x")
    assert set_cookie[1] == f"__Host-{cookies.name(port)}={cookies.value(port)}; Path=/; HttpOnly; SameSite=Lax; Secure"
    sent = set_cookie[1].split(";")[0]
    assert cookies.valid(sent, port, secure=True)
    assert not cookies.valid(sent.removeprefix("__Host-"), port, secure=True)  # a plain one could be planted
    assert not cookies.valid(sent.replace(cookies.name(port), cookies.name(sibling)), sibling, secure=True)
    assert not TokenCookies("another secret").valid(sent, port, secure=True)
