"""Port URLs as apps print them, the app's cookies, and a port where nothing listens.

- A port's URL without its trailing slash (Streamlit prints ``http://hub/ports/alice/8501``,
  Gradio's root_path has that form) works for the owner's hub login, a token and a public
  port, on the path template with single ports and ranges, and on the seed form
  ``/hub/proxy{port}/{username}/``: a browser is sent on to the slash form (308), where every
  framework's page works; a script gets the app's answer at the path as sent. The login's
  cookies have the route's path without the slash, which a browser never sends to a sibling
  such as ``/ports/alice/85012``.
- What an attacker would try: mallory's app sets cookies with ``Path=/`` and a ``Domain``;
  on path routes (the hub's origin, shared by every port) they must never reach alice's port.
- A port whose app is not listening answers a page (browsers) or JSON (scripts) naming the
  port and the server.

Host routes (``subdomain_host``) have no slash-less form: the URL of a port is its host, and a
browser always asks for ``/`` there (tests/test_subdomains.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.rig import browser_login, cookie_header, free_port, free_ports, port_open, sibling_ports, wait_for

# an app of mallory's: every answer sets a cookie for the whole host and one with a Domain
COOKIE_APP = """
import sys
from tornado import ioloop, web

class Handler(web.RequestHandler):
    def get(self, *args):
        self.add_header("Set-Cookie", "mallory-root=planted; Path=/")
        self.add_header("Set-Cookie", "mallory-domain=planted; Path=/; Domain=127.0.0.1")
        self.add_header("Set-Cookie", "mallory-default=planted")
        self.write("cookies set")

web.Application([(r"/(.*)", Handler)]).listen(int(sys.argv[1]), "127.0.0.1")
ioloop.IOLoop.current().start()
"""


@pytest.fixture(scope="module")
def cookie_apps(module_tmp):
    procs = {}
    script = module_tmp / "cookie_app.py"
    script.write_text(COOKIE_APP)
    for name in ("scoped", "unscoped"):
        port = free_port()
        log = module_tmp / f"cookie-app-{port}.log"
        procs[name] = (
            port,
            subprocess.Popen([sys.executable, str(script), str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT),
        )
        wait_for(lambda port=port: port_open(port), 15, f"cookie app on {port}", log)
    yield {name: port for name, (port, _) in procs.items()}
    for _, proc in procs.values():
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def apps(make_app):
    owner, sibling = sibling_ports()
    block = free_ports(2)  # the range block..block+1, an app on its first port
    return {
        "owner": make_app(owner),
        "sibling": make_app(sibling),
        "token": make_app(),
        "public": make_app(),
        "range": make_app(block),
        "block": block,
        "dead": free_port(),
    }


@pytest.fixture(scope="module")
def hub(make_hub, apps, cookie_apps):
    ports = [
        {"port": apps["owner"].port, "access": "owner"},
        # direct from CHP (no rewrite, no sidecar): the app sees the browser's Cookie header as sent
        {"port": apps["sibling"].port, "access": "public", "scope_cookies": False},
        apps["token"].port,
        {"port": apps["public"].port, "access": "public"},
        {"port": f"{apps['block']}-{apps['block'] + 1}"},
        {"port": apps["dead"], "access": "public"},
        {"port": cookie_apps["scoped"], "access": "public"},
        {"port": cookie_apps["unscoped"], "access": "public", "scope_cookies": False},
    ]
    hub = make_hub(ports, "c.PortRoutes.default_startup_behavior = 'random'\n")
    for user in ("alice", "mallory"):
        hub.user_token(user)
        hub.spawn(user)
    return hub


@pytest.fixture(scope="module")
def token(hub):
    return hub.proxytoken(hub.user_token("alice"), "POST", content="random").json()


def login(browser, hub, user: str):
    return browser_login(browser, hub.url, user)


def echoed(page) -> dict:
    return json.loads(page.locator("body").inner_text())


# ---- 1. the URL without its trailing slash ------------------------------------------------------
def test_owner_opens_the_slashless_url_in_chromium(browser, hub, apps):
    context, page = login(browser, hub, "alice")
    path = f"/ports/alice/{apps['owner'].port}"
    page.goto(path)  # on to the slash form, through the hub's OAuth and back
    assert page.url == hub.url + path + "/"
    assert echoed(page)["path"] == path + "/"
    [session] = [c for c in context.cookies() if c["name"].startswith("jhproxy-routes-session-")]
    assert session["path"] == path
    # below the route, the same session
    page.goto(path + "/deeper/")
    assert echoed(page)["path"] == path + "/deeper/"

    # a sibling whose path has the route's path as a string prefix never gets the cookie
    sibling = f"/ports/alice/{apps['sibling'].port}"
    assert sibling.startswith(path) and sibling != path
    before = len(apps["sibling"].received())
    page.goto(sibling + "/")
    page.goto(sibling)
    seen = apps["sibling"].received()[before:]
    assert len(seen) == 2 and all("jhproxy-routes" not in cookie_header(e) for e in seen), seen
    context.close()


def test_a_session_of_the_old_path_still_works(browser, hub, apps):
    """Sessions made before this change have Path=<route>/ : below the slash they still count."""
    context, page = login(browser, hub, "alice")
    path = f"/ports/alice/{apps['owner'].port}"
    page.goto(path + "/")
    [session] = [c for c in context.cookies() if c["name"].startswith("jhproxy-routes-session-")]
    context.clear_cookies(name=session["name"])
    context.add_cookies([{**session, "path": path + "/"}])
    response = page.goto(path + "/again")
    assert response.status == 200 and echoed(page)["path"] == path + "/again"
    context.close()


def test_token_and_public_slashless(hub, apps, token):
    for port in (apps["token"].port, apps["block"]):  # a single port and a port of a range
        path = f"/ports/alice/{port}"
        assert hub.get(path).status_code == 403  # no credentials
        by_query = hub.get(path, params={"proxy_token": token})
        assert by_query.status_code == 200 and by_query.json()["path"] == path, by_query.text
        by_header = hub.get(path, headers={"X-Proxy-Token": token})
        assert by_header.status_code == 200 and by_header.json()["path"] == path
    for app in ("public", "sibling"):  # through the sidecar (scoped cookies), and direct
        path = f"/ports/alice/{apps[app].port}"
        response = hub.get(path)
        assert response.status_code == 200 and response.json()["path"] == path


def test_owner_slashless_through_a_range(hub, apps):
    alice = hub.login("alice")
    path = f"/ports/alice/{apps['block']}"
    response = alice.get(path, follow_redirects=True)
    assert response.status_code == 200 and response.json()["path"] == path + "/", response.text
    assert [c.path for c in alice.cookies.jar if c.name.startswith("jhproxy-routes-session-")] == [path]


def test_seed_form_template_slashless(make_hub, make_app):
    app = make_app()
    hub = make_hub(
        [{"port": app.port, "access": "owner"}],
        'c.PortRoutes.route_template = "/hub/proxy{port}/{username}/"\n',
        name="seed",
    )
    hub.user_token("alice")
    hub.spawn("alice")
    path = f"/hub/proxy{app.port}/alice"
    page = {"Accept": "text/html", "Upgrade-Insecure-Requests": "1"}
    slash = hub.get(path + "?x=1", headers=page)
    assert (slash.status_code, slash.headers["Location"]) == (308, path + "/?x=1")
    assert hub.get(path + "/", headers=page).status_code == 302  # to the hub login
    posted = httpx.post(hub.url + path, headers=page, timeout=30)  # no redirect for a POST: the access check answers
    assert posted.status_code == 403
    alice = hub.login("alice")
    response = alice.get(path, follow_redirects=True)
    assert response.status_code == 200 and response.json()["path"] == path + "/", response.text
    assert [c.path for c in alice.cookies.jar if c.name.startswith("jhproxy-routes-session-")] == [path]


# ---- 2. the app's cookies stay on its port ------------------------------------------------------
def test_an_apps_cookies_never_reach_another_port(browser, hub, apps, cookie_apps, token):
    context = browser.new_context(base_url=hub.url)
    page = context.new_page()
    mallory = f"/ports/mallory/{cookie_apps['scoped']}"
    page.goto(mallory + "/x/y")
    assert "cookies set" in page.content()
    planted = {c["name"]: c for c in context.cookies()}
    assert set(planted) == {"mallory-root", "mallory-default", "mallory-domain"}
    assert {c["path"] for c in planted.values()} == {mallory}
    assert all(c["domain"] == "127.0.0.1" for c in planted.values())  # host-only: no Domain attribute left
    # alice's ports, with her token: the browser sends mallory's cookies to none of them
    before = len(apps["token"].received())
    page.goto(f"/ports/alice/{apps['token'].port}/?proxy_token={token}")
    page.goto(f"/ports/alice/{apps['public'].port}/")
    seen = apps["token"].received()[before:] + apps["public"].received()[-1:]
    assert seen and all("mallory" not in cookie_header(e) for e in seen), seen
    # as the browser sees it: mallory's cookies go to mallory's port only
    assert {c["name"] for c in context.cookies(hub.url + mallory + "/again")} == set(planted)
    for port in (apps["token"].port, apps["public"].port):
        sent = context.cookies(f"{hub.url}/ports/alice/{port}/")
        assert not [c for c in sent if c["name"].startswith("mallory")], sent
    context.close()


def test_scoping_turned_off_per_port_passes_the_apps_cookies(hub, cookie_apps):
    unscoped = hub.get(f"/ports/mallory/{cookie_apps['unscoped']}/")
    assert "mallory-root=planted; Path=/" in unscoped.headers.get_list("set-cookie")
    assert hub.port_routes()[f"/ports/mallory/{cookie_apps['unscoped']}"]["target"].endswith(f":{cookie_apps['unscoped']}")
    scoped = hub.get(f"/ports/mallory/{cookie_apps['scoped']}/")
    route = f"/ports/mallory/{cookie_apps['scoped']}"
    assert scoped.headers.get_list("set-cookie") == [
        f"mallory-root=planted; Path={route}",
        f"mallory-domain=planted; Path={route}",
        f"mallory-default=planted; Path={route}",
    ]
    # a public port with scoping goes through the sidecar (a direct route cannot rewrite)
    assert hub.port_routes()[route]["target"] == hub.sidecar_url


# ---- 3. nothing listening --------------------------------------------------------------------
def test_nothing_listening_is_said_in_words(hub, apps):
    path = f"/ports/alice/{apps['dead']}/"
    words = f"Nothing is listening on port {apps['dead']} of alice's server yet"
    script = hub.get(path)
    assert script.status_code == 502 and words in script.json()["message"]
    page = hub.get(path, headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 502 and page.headers["content-type"].startswith("text/html")
    assert words.replace("'", "&#x27;") in page.text
    hub.spawn("alice", "dev")
    named = hub.get(f"/ports/alice/dev/{apps['dead']}/")
    assert named.status_code == 502
    assert f"Nothing is listening on port {apps['dead']} of alice's server dev yet" in named.json()["message"]
