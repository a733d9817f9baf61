"""What the page of mallory's ``public`` port (a direct route: CHP sends it straight to her
app, ``tests/hostile_page.py``) can do to alice, who visits it while logged into the hub and
into her own port. Two hubs on ``hub.test``: one with its ports on its own domain
(``{port}--{username}.{subdomain_host}``), one with them on a domain apart
(``{port}--{username}.ports-content.test``); each behind HTTPS (the proxy ends TLS with the
test CA's certificate, which Chromium trusts: its pages are secure contexts, as on a real
site) and over plain HTTP.

What mallory tries: plant her own hub login for the hub's whole domain (``Domain=hub.test;
Path=/hub/``, by a Set-Cookie header and by script: JupyterHub's CVE-2024-28233 class), so
that alice uses the hub as mallory; and set so many cookies for a domain that the proxy refuses
alice's requests (a cookie bomb). On the hub's domain behind HTTPS the first fails (the hub's
login is a ``__Host-`` cookie: ``cookie_host_prefix_enabled``, turned on by jhproxy-routes);
over plain HTTP it succeeds, and the bomb does on both: demonstrations of what ``jhproxy-routes
check`` warns about, and of why a port domain exists. From the port domain neither reaches the
hub (a browser takes no cookie for a domain its page is not in), while a bomb for the port
domain itself fills every port host of the visitor. Logins work on both, across the two
domains too; another user's login is refused.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest

from tests.rig import (
    HOSTILE_PAGE,
    HUB_HOST,
    browser_login,
    hub_user,
    log_into_port,
    origin,
    run_page,
    start_hubs,
    status_of,
)

PORT_DOMAIN = "ports-content.test"
LOGIN = "jupyterhub-hub-login"
BOMB = {"count": 5, "size": 3900}  # 19.5 KB of cookies: over the proxy's 16 KiB for a request head


@pytest.fixture(scope="module")
def apps(make_app):
    return {"team": make_app(), "hostile": make_app(script=HOSTILE_PAGE)}


@pytest.fixture(scope="module")
def hubs(make_hub, apps, certificate):
    ports = [{"port": apps["team"].port, "access": "owner"}, {"port": apps["hostile"].port, "access": "public"}]
    templates = {HUB_HOST: "{port}--{username}.{subdomain_host}", PORT_DOMAIN: "{port}--{username}." + PORT_DOMAIN}
    return start_hubs(make_hub, ports, templates, certificate)


@pytest.fixture(params=["https", "http"])
def scheme(request) -> str:
    return request.param


@pytest.fixture
def on_hub_domain(hubs, scheme):
    return hubs[HUB_HOST, scheme]


@pytest.fixture
def on_port_domain(hubs, scheme):
    return hubs[PORT_DOMAIN, scheme]


def hub_url(hub) -> str:
    return origin(hub, HUB_HOST)


def port_url(hub, app, user: str, domain: str) -> str:
    return origin(hub, f"{app.port}--{user}.{domain}")


def test_a_public_ports_page_cannot_log_its_visitors_into_the_hub_as_its_owner(browser, on_hub_domain, apps):
    hub = on_hub_domain
    mallory, _ = browser_login(browser, hub_url(hub), "mallory")
    # her own hub login, as her browser holds it: hers to plant
    planted = {c["name"].removeprefix("__Host-"): c["value"] for c in mallory.cookies() if c["name"].endswith(LOGIN)}
    assert planted, mallory.cookies()
    context, page = browser_login(browser, hub_url(hub), "alice")
    assert page.evaluate("window.isSecureContext") == (hub.scheme == "https")  # the test CA is trusted as a real one
    assert hub_user(page, hub_url(hub)) == "alice"
    # alice visits mallory's public port, whose page plants mallory's login for the whole domain
    hostile = port_url(hub, apps["hostile"], "mallory", HUB_HOST)
    for path in ("/hub/", "/"):
        query = urlencode({"domain": HUB_HOST, "path": path, **planted, **{"__Host-" + n: v for n, v in planted.items()}})
        run_page(page, f"{hostile}/toss?{query}")
    tossed = [c for c in context.cookies() if c["domain"] == "." + HUB_HOST and c["name"].endswith(LOGIN)]
    assert {c["name"] for c in tossed} == {LOGIN}, tossed  # it landed, but no __Host- cookie can
    if hub.scheme == "http":  # the demonstration of what check warns about
        assert hub_user(page, hub_url(hub)) == "mallory"
    else:
        assert hub_user(page, hub_url(hub)) == "alice"
        page.goto(f"{hub_url(hub)}/hub/home")
        assert "mallory" not in page.content()
        # because the hub's login is a cookie of its own host, which the hub alone reads
        login = next(c for c in context.cookies() if c["name"].endswith(LOGIN) and c["domain"] == HUB_HOST)
        assert (login["name"], login["path"], login["secure"]) == ("__Host-" + LOGIN, "/", True)
    context.close()
    mallory.close()


def test_on_the_hubs_domain_a_public_page_can_cookie_bomb_the_hub(browser, on_hub_domain, apps):
    """The demonstration: five cookies of 3.9 KB for the hub's domain make every request of
    alice's browser to the hub and to every port carry some 20 KB of cookies, over the
    proxy's limit: 431 until she clears them. A ``__Host-`` login does not help."""
    hub = on_hub_domain
    context, page = browser_login(browser, hub_url(hub), "alice")
    run_page(page, f"{port_url(hub, apps['hostile'], 'mallory', HUB_HOST)}/bomb?" + urlencode({"domain": HUB_HOST, **BOMB}))
    assert sum(len(c["value"]) for c in context.cookies() if c["name"].startswith("bomb")) == 5 * 3900
    assert status_of(page, f"{hub_url(hub)}/hub/home") == 431
    assert status_of(page, f"{port_url(hub, apps['team'], 'alice', HUB_HOST)}/") == 431
    context.clear_cookies(name=re.compile("^bomb"))
    assert status_of(page, f"{hub_url(hub)}/hub/home") == 200
    context.close()


@pytest.mark.parametrize("domain", [HUB_HOST, PORT_DOMAIN])
def test_the_owners_login_to_a_port_works(browser, hubs, scheme, apps, domain):
    """On the hub's domain (behind HTTPS with the hub's ``__Host-`` login) and across to the
    port domain: the hub's OAuth, the sidecar's callback on the hub's domain, a ticket back to
    the port's host, a session cookie of that host only."""
    hub = hubs[domain, scheme]
    session = log_into_port(browser, hub_url(hub), port_url(hub, apps["team"], "alice", domain), apps["team"])
    assert session["domain"] == f"{apps['team'].port}--alice.{domain}"
    assert session["name"].startswith("__Host-") == session["secure"] == (scheme == "https")


def test_ports_get_hosts_on_their_own_domain(browser, on_port_domain, apps):
    hub = on_port_domain
    for user in ("alice", "mallory"):
        routes = hub.port_routes()
        assert routes[f"/{apps['team'].port}--{user}.{PORT_DOMAIN}"]["target"] == hub.sidecar_url
        assert routes[f"/{apps['hostile'].port}--{user}.{PORT_DOMAIN}"]["target"] == f"http://127.0.0.1:{apps['hostile'].port}"
    # the hub's pages show the ports' URLs on their domain
    team = port_url(hub, apps["team"], "alice", PORT_DOMAIN)
    settings = hub.proxytoken(hub.user_token("alice"), params={"format": "full"}).json()
    assert {p["port"]: p["url"] for p in settings["ports"]}[apps["team"].port] == team + "/"
    context, page = browser_login(browser, hub_url(hub), "alice")
    assert page.locator(f'a[href="{team}/"]').count() == 1  # the home page
    context.close()


def test_from_the_port_domain_a_public_page_reaches_no_cookie_of_the_hub(browser, on_port_domain, apps):
    hub = on_port_domain
    mallory, _ = browser_login(browser, hub_url(hub), "mallory")
    planted = {LOGIN: next(c["value"] for c in mallory.cookies() if c["name"] == LOGIN)}
    mallory.close()
    context, page = browser_login(browser, hub_url(hub), "alice")
    team = port_url(hub, apps["team"], "alice", PORT_DOMAIN)
    page.goto(f"{team}/")
    page.wait_for_url(f"{team}/")  # logged into her port too
    hostile = port_url(hub, apps["hostile"], "mallory", PORT_DOMAIN)
    # the page made for a port on the hub's domain: mallory's login and a bomb for hub.test
    run_page(page, f"{hostile}/toss?" + urlencode({"domain": HUB_HOST, "path": "/hub/", **planted}))
    run_page(page, f"{hostile}/bomb?" + urlencode({"domain": HUB_HOST, **BOMB}))
    assert not [c for c in context.cookies() if c["name"].startswith("bomb") or c["value"] in planted.values()]
    assert hub_user(page, hub_url(hub)) == "alice"
    assert status_of(page, f"{team}/") == 200
    # a bomb for the port domain itself fills every port host of hers, and only those
    run_page(page, f"{hostile}/bomb?" + urlencode({"domain": PORT_DOMAIN, **BOMB}))
    assert status_of(page, f"{team}/") == 431
    assert status_of(page, f"{hub_url(hub)}/hub/home") == 200
    assert hub_user(page, hub_url(hub)) == "alice"
    context.close()


def test_another_ports_frame_gets_the_visitors_login_only_over_plain_http(browser, on_port_domain, apps):
    """Port hosts are one site: the browser sends alice's session cookie of her port with a
    frame and an image that mallory's page loads. Behind HTTPS the sidecar tells them from a
    page alice opened by their fetch metadata, and refuses both; over plain HTTP Chromium sends
    none: the image is refused (no Referer of the port's own, no navigation), while the frame's
    navigation looks like a page's and gets in, with an answer no other origin may frame
    (tests/test_sibling_hosts.py shows the browser then shows nothing of it)."""
    hub = on_port_domain
    context, page = browser_login(browser, hub_url(hub), "alice")
    team = port_url(hub, apps["team"], "alice", PORT_DOMAIN)
    page.goto(f"{team}/")
    page.wait_for_url(f"{team}/")  # logged into her port
    marker = f"/framed-by-mallory-{hub.scheme}"
    run_page(page, f"{port_url(hub, apps['hostile'], 'mallory', PORT_DOMAIN)}/frame?" + urlencode({"src": team + marker}))
    reached = [entry for entry in apps["team"].received() if entry["path"] == marker]
    assert len(reached) == (0 if hub.scheme == "https" else 1), reached
    assert all(dict(entry["headers"]).get("Upgrade-Insecure-Requests") == "1" for entry in reached), reached
    context.close()
