"""In a real browser: Debian's Chromium, driven by Playwright, against a real hub.

A person logs in, opens /hub/proxytoken/, makes and reads a token, calls a port from a page
on another origin (examples/client_ajax_CORS_example.html), opens their own protected port
by clicking its link (hub login through OAuth, no token), uses a websocket through it, and
meets the error page of a port that is off. Screenshots land in tests/screenshots/ (not in
git) for a person to look at.
"""

from __future__ import annotations

import functools
import http.server
import re
import threading

import httpx
import pytest
from playwright.sync_api import expect

from tests.rig import REPO, assert_no_credentials, browser_login, free_port, shoot, websocket_echo


@pytest.fixture(scope="module")
def apps(make_app):
    return {"api": make_app(), "off": make_app(), "team": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    ports = [
        {"port": apps["api"].port, "name": "api"},
        {"port": apps["off"].port, "name": "off", "access": "disabled"},
        {"port": apps["team"].port, "name": "team", "access": "owner"},
    ]
    hub = make_hub(ports, "c.PortRoutes.default_startup_behavior = 'random'\n")
    hub.user_token("alice")
    hub.user_token("bob")
    hub.spawn("alice")
    return hub


@pytest.fixture(scope="module")
def other_origin():
    """examples/ served by a second web server: another origin than the hub's."""
    port = free_port()
    handler = functools.partial(QuietHandler, directory=str(REPO / "examples"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def login(browser, hub, user: str):
    """A new browser context (cookie jar) logged into the hub as ``user``."""
    return browser_login(browser, hub.url, user)


def port_path(hub, port: int, user: str = "alice") -> str:
    return f"/ports/{user}/{port}/"


def server_section(page):
    section = page.locator('section[data-server=""]')
    section.locator(".jhpr-ports tr").first.wait_for()
    return section


def test_token_page_regenerate_and_call_from_another_origin(browser, hub, apps, other_origin):
    context, page = login(browser, hub, "alice")
    # "Ports" in the hub's navbar leads to the page
    page.goto("/hub/home")
    page.click("nav >> text=Ports")
    page.wait_for_url(re.compile(r"/hub/proxytoken/$"))
    section = server_section(page)
    assert "Ports of your servers" in page.content()
    row = section.locator(f'tr[data-port="{apps["api"].port}"]')
    assert row.locator("a").get_attribute("href") == hub.url + port_path(hub, apps["api"].port)
    assert row.locator("select").input_value() == "server"

    token_field = section.locator(".jhpr-token")
    before = token_field.input_value()  # the server may have a token already
    section.locator("[data-action=random]").click()
    page.wait_for_function("([el, old]) => el.value.length > 40 && el.value !== old", arg=[token_field.element_handle(), before])
    section.locator("[data-action=show]").click()
    assert token_field.get_attribute("type") == "text"
    token = token_field.input_value()
    shoot(page, "proxytoken-page")
    # the page and the API agree, and the token opens the port for a script
    assert hub.proxytoken(hub.user_token("alice")).json() == token

    # from a page on another origin, with fetch and the X-Proxy-Token header (CORS)
    other = context.new_page()
    url = hub.url + port_path(hub, apps["api"].port) + "from-another-site"
    other.goto(f"{other_origin}/client_ajax_CORS_example.html")
    other.fill("#url", url)
    other.fill("#token", token)
    other.click("#call")
    other.wait_for_function("document.getElementById('status').textContent !== 'calling...'")
    assert other.text_content("#status") == "200", other.text_content("#output")
    assert '"path": "/ports/alice/' in other.text_content("#output")
    shoot(other, "cors-example")

    # a new token on the page: the old one is refused, from the other site too
    section.locator("[data-action=random]").click()
    page.wait_for_function("([el, old]) => el.value && el.value !== old", arg=[token_field.element_handle(), token])
    other.click("#call")
    other.wait_for_function("document.getElementById('status').textContent !== 'calling...'")
    assert other.text_content("#status") == "403"
    assert "X-Proxy-Token" in other.text_content("#output")
    assert_no_credentials(apps["api"].received(), [token])
    context.close()


def test_owner_opens_protected_port_by_clicking_its_link(browser, hub, apps):
    context, page = login(browser, hub, "alice")
    page.goto("/hub/proxytoken/")
    section = server_section(page)
    with context.expect_page() as opened:
        section.locator(f'tr[data-port="{apps["team"].port}"] a').click()
    port_page = opened.value
    port_page.wait_for_load_state()
    # through the hub's OAuth and back, without any token
    assert port_page.url == hub.url + port_path(hub, apps["team"].port)
    echoed = port_page.text_content("body")
    assert f'"path": "/ports/alice/{apps["team"].port}/"' in echoed
    shoot(port_page, "owner-port")
    cookies = {c["name"]: c for c in context.cookies()}
    session = [c for name, c in cookies.items() if name.startswith("jhproxy-routes-session-")]
    assert len(session) == 1 and session[0]["path"] == port_path(hub, apps["team"].port).rstrip("/")
    assert session[0]["httpOnly"]
    # the app saw neither the hub's cookies nor the sidecar's
    assert_no_credentials(apps["team"].received(), [session[0]["value"]])

    # a websocket from the browser, through the protected port, on the login alone
    assert websocket_echo(port_page, "hello through the sidecar") == "hello through the sidecar"
    context.close()


def test_other_users_need_the_owners_permission(browser, hub, apps):
    team_url = port_path(hub, apps["team"].port)
    bob, bob_page = login(browser, hub, "bob")
    response = bob_page.goto(team_url)
    assert response.status == 403
    assert "logged in as bob" in bob_page.text_content("h1")
    assert "Traceback" not in bob_page.content()
    shoot(bob_page, "not-open-to-you")

    # a stranger without a hub login is sent to log in, never let through
    stranger = browser.new_context(base_url=hub.url)
    stranger_page = stranger.new_page()
    stranger_page.goto(team_url)
    assert "/hub/login" in stranger_page.url
    stranger.close()

    # alice opens the port to hub users on her page: bob gets in
    alice, page = login(browser, hub, "alice")
    page.goto("/hub/proxytoken/")
    section = server_section(page)
    row = section.locator(f'tr[data-port="{apps["team"].port}"]')
    row.locator("select").select_option("users")
    expect(row.locator(".jhpr-admits")).to_contain_text("hub users")
    shoot(page, "proxytoken-page-users")
    response = bob_page.goto(team_url)
    assert response.status == 200
    assert f'"path": "{team_url}"' in bob_page.text_content("body")
    alice.close()
    bob.close()


def test_disabled_port_shows_an_error_page(browser, hub, apps):
    context, page = login(browser, hub, "alice")
    response = page.goto(port_path(hub, apps["off"].port))
    assert response.status == 403
    assert response.headers["content-type"].startswith("text/html")
    assert "turned off" in page.text_content("h1")
    assert page.locator("a[href='/hub/proxytoken/']").count() == 1
    assert "Traceback" not in page.content()
    shoot(page, "disabled-port")
    # a script gets the same answer as JSON
    scripted = httpx.get(hub.url + port_path(hub, apps["off"].port), timeout=30)
    assert scripted.status_code == 403 and "turned off" in scripted.json()["message"]
    context.close()
