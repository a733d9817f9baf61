"""Subdomain routes: with JupyterHub's ``subdomain_host`` (CHP's host routing) and the
template ``{port}--{username}.{subdomain_host}``, each port is an origin of its own.

Scripts talk to the proxy at 127.0.0.1 with a Host header; a real Chromium, which resolves
``*.localhost`` to loopback by itself, logs in at the hub and opens the ports by name.

What an attacker would try: reach the sidecar's own API, metrics or OAuth callback through a
port's host; another user's port with one's own token; a host in capitals; a cookie set by one
port's page read by another port's app; the hub's session cookie (set for every host below the
hub's) reaching an app; a port's app taking over the login of another.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests import rig
from tests.rig import ADMIN_TOKEN, assert_no_credentials, shoot, wait_for

HUB_HOST = "hub.localhost"


@pytest.fixture(scope="module")
def apps(make_app):
    return {"api": make_app(), "team": make_app(), "open": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    ports = [
        {"port": apps["api"].port, "name": "api"},
        {"port": apps["team"].port, "name": "team", "access": "owner"},
        {"port": apps["open"].port, "name": "open", "access": "public"},
    ]
    config = f"""
c.JupyterHub.subdomain_host = f"http://{HUB_HOST}:{{c.JupyterHub.port}}"
c.PortRoutes.route_template = "{{port}}--{{username}}.{{subdomain_host}}"
c.PortRoutes.default_startup_behavior = "random"
"""
    hub = make_hub(ports, config)
    for user in ("alice", "bob"):
        hub.user_token(user)
    hub.spawn("alice")
    hub.spawn("bob")
    return hub


def host_of(app, user: str = "alice") -> str:
    return f"{app.port}--{user}.{HUB_HOST}"


def at(hub, host: str, path: str = "/", method: str = "GET", **kwargs) -> httpx.Response:
    """A request to the proxy as a browser would send it to ``http://<host>:<port><path>``."""
    headers = {"Host": f"{host}:{hub.port}", **kwargs.pop("headers", {})}
    return httpx.request(method, hub.url + path, headers=headers, timeout=30, **kwargs)


def token_of(hub, user: str) -> str:
    response = hub.proxytoken(hub.user_token(user))
    assert response.status_code == 200, response.text
    return response.json()


def cookie_header(page) -> str:
    """The Cookie header the echo app got for the page now shown."""
    headers = json.loads(page.locator("body").inner_text())["headers"]
    return next((value for name, value in headers if name.lower() == "cookie"), "")


def test_each_port_is_a_host_of_its_own(hub, apps):
    routes = hub.port_routes()
    for user in ("alice", "bob"):
        assert routes["/" + host_of(apps["api"], user)]["target"] == hub.sidecar_url
        assert routes["/" + host_of(apps["team"], user)]["target"] == hub.sidecar_url
        assert routes["/" + host_of(apps["open"], user)]["target"] == f"http://127.0.0.1:{apps['open'].port}"  # direct
    # the token page names the ports by their URLs
    settings = hub.proxytoken(hub.user_token("alice"), params={"format": "full"}).json()
    urls = {p["name"]: p["url"] for p in settings["ports"]}
    assert urls["api"] == f"http://{host_of(apps['api'])}:{hub.port}/"
    token = settings["token"]
    response = at(hub, host_of(apps["api"]), "/some/path?q=1", headers={"X-Proxy-Token": token})
    assert response.status_code == 200, response.text
    assert json.loads(response.text)["path"] == "/some/path"  # the whole host is the app's
    assert at(hub, host_of(apps["api"]), "/some/path").status_code == 403
    assert at(hub, host_of(apps["api"], "bob"), "/", headers={"X-Proxy-Token": token}).status_code == 403
    assert at(hub, host_of(apps["open"])).status_code == 200
    assert_no_credentials(apps["api"].received(), [token])


def test_a_port_host_reaches_nothing_but_its_app(hub, apps):
    token = token_of(hub, "alice")
    host = host_of(apps["api"])
    # the sidecar's API, metrics and OAuth callback are the app's paths on a port's host
    for path in (
        "/_jhproxy-routes/api/routes",
        "/_jhproxy-routes/metrics",
        "/services/jhproxy-routes/oauth_callback?code=x&state=y",
    ):
        refused = at(hub, host, path, headers={"Authorization": f"token {ADMIN_TOKEN}"})
        assert refused.status_code == 403 and "X-Proxy-Token" in refused.text, (path, refused.text)
        passed = at(hub, host, path, headers={"X-Proxy-Token": token, "Authorization": f"token {ADMIN_TOKEN}"})
        assert passed.status_code == 200 and json.loads(passed.text)["path"] == path.partition("?")[0]
    # hosts are matched as CHP matches them: exactly, in lower case; anything else is the
    # hub's (which redirects or answers 404), also the path form on the hub's own host
    port = apps["api"].port
    elsewhere = [
        (host.upper(), "/"),
        (f"{port}--alice.other.localhost", "/"),
        (f"{port}--carol.{HUB_HOST}", "/"),
        (HUB_HOST, f"/ports/alice/{port}/"),
    ]
    for other, path in elsewhere:
        response = at(hub, other, path, headers={"X-Proxy-Token": token})
        assert response.status_code in (302, 404) and '"path"' not in response.text, (other, response.text[:200])


def test_routes_are_kept_and_follow_the_server(hub, apps):
    log_lines = lambda: len(re.findall(r"jhproxy-routes: (adding|removing stale) proxy route", hub.log()))  # noqa: E731
    before = log_lines()
    time.sleep(5)  # two reconciliations: read back in host form, nothing to fix
    assert log_lines() == before
    key = "/" + host_of(apps["team"])
    httpx.delete(f"{hub.chp_api}/api/routes{key}", headers={"Authorization": f"token {hub.chp_token}"}, timeout=10)
    wait_for(lambda: key in hub.port_routes(), 15, "the deleted route to come back", hub.log_path)
    hub.stop_server("bob")
    assert not [k for k in hub.port_routes() if "--bob." in k]
    hub.spawn("bob")
    assert "/" + host_of(apps["team"], "bob") in hub.port_routes()


def browser_login(browser, hub, user: str):
    """A new browser context logged in at the hub's own host; (context, page, hub URL)."""
    hub_url = f"http://{HUB_HOST}:{hub.port}"
    return (*rig.browser_login(browser, hub_url, user), hub_url)


def test_browser_login_on_a_port_host_and_origins_apart(browser, hub, apps):
    context, page, hub_url = browser_login(browser, hub, "alice")
    # the owner-only port, opened by name: OAuth on the sidecar's host, back with a ticket
    team = f"http://{host_of(apps['team'])}:{hub.port}"
    visited = []
    page.on("request", lambda request: visited.append(request.url) if request.is_navigation_request() else None)
    page.goto(f"{team}/dashboard?x=1")
    page.wait_for_url(f"{team}/dashboard?x=1")
    hops = [re.sub(r"\?.*", "", url) for url in visited]
    assert hops == [
        f"{team}/dashboard",
        f"{hub_url}/hub/api/oauth2/authorize",
        f"http://jhproxy-routes--service.{HUB_HOST}:{hub.port}/services/jhproxy-routes/oauth_callback",
        f"{team}/dashboard",
        f"{team}/dashboard",
    ], visited
    assert "jhproxy_routes_login=" in visited[3]
    seen = json.loads(page.locator("body").inner_text())
    assert seen["path"] == "/dashboard" and seen["query"] == "x=1", seen
    shoot(page, "subdomain-port-after-login")
    cookies = {c["name"]: c for c in context.cookies()}
    session = next(c for n, c in cookies.items() if n.startswith("jhproxy-routes-session-"))
    assert session["domain"] == host_of(apps["team"]) and session["path"] == "/" and session["httpOnly"]
    hub_session = cookies["jupyterhub-session-id"]
    assert hub_session["domain"].lstrip(".") == HUB_HOST  # sent to every port host by the browser...
    assert_no_credentials(
        apps["team"].received(), [session["value"], hub_session["value"], cookies["jupyterhub-hub-login"]["value"]]
    )
    # ...and stripped by the sidecar. A cookie one port's page sets is not sent to another port
    page.evaluate("document.cookie = 'set_by_team=1; path=/'")
    page.goto(f"{team}/again")
    assert "set_by_team=1" in cookie_header(page)
    api = f"http://{host_of(apps['open'])}:{hub.port}"  # a direct route: what the browser sends
    page.goto(f"{api}/")
    assert "set_by_team" not in cookie_header(page)
    # nor can the team port's page read another port's answers: another origin, no CORS
    page.goto(f"{team}/again")
    read = page.evaluate(f"fetch('{api}/', {{credentials: 'include'}}).then(r => r.text()).catch(e => 'blocked: ' + e)")
    assert read.startswith("blocked"), read
    # the login of alice is for that one port: bob's port of the same app still wants his
    page.goto(f"http://{host_of(apps['team'], 'bob')}:{hub.port}/")
    assert "logged in as alice" in page.content()
    # its link to the token page leads to the hub's host, not into the port's app
    assert page.locator(f'a[href="{hub_url}/hub/proxytoken/"]').count() == 1
    context.close()


def test_path_routes_and_ranges_live_on_the_hubs_host(browser, make_hub, make_app):
    """A path template under subdomain_host: routes on the hub's own host (CHP keys begin
    with it), a port range read from the path there, and a login whose OAuth callback is on
    the sidecar's host while the port is on the hub's."""
    app = make_app()
    hub = make_hub(
        [f"{app.port}-{app.port + 1}"],
        f"""
c.JupyterHub.subdomain_host = f"http://{HUB_HOST}:{{c.JupyterHub.port}}"
""",
        name="paths",
    )
    hub.user_token("alice")
    hub.spawn("alice")
    assert f"/{HUB_HOST}/ports/alice" in hub.port_routes()
    context, page, hub_url = browser_login(browser, hub, "alice")
    port_url = f"{hub_url}/ports/alice/{app.port}/x"
    page.goto(port_url)
    page.wait_for_url(port_url)
    assert json.loads(page.locator("body").inner_text())["path"] == f"/ports/alice/{app.port}/x"
    session = next(c for c in context.cookies() if c["name"].startswith("jhproxy-routes-session-"))
    assert session["domain"] == HUB_HOST and session["path"] == f"/ports/alice/{app.port}"
    page.goto(f"{hub_url}/ports/alice/{app.port + 2}/")
    assert "is not in the allow-list of this server" in page.content()
    # the same path on a port's host, or on the sidecar's, is not this route
    token = hub.proxytoken(hub.user_token("alice"), "POST", content="random").json()
    assert at(
        hub, f"jhproxy-routes--service.{HUB_HOST}", f"/ports/alice/{app.port}/", headers={"X-Proxy-Token": token}
    ).status_code in (302, 404)
    assert at(hub, HUB_HOST, f"/ports/alice/{app.port}/", headers={"X-Proxy-Token": token}).status_code == 200
    context.close()
