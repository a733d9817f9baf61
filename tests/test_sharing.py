"""The ``shared`` visibility against a real hub and JupyterHub's own sharing: whoever the hub
lets access a server (shares with users and groups, share codes accepted in Chromium, roles)
gets into its ``shared`` ports with their hub login, and loses it when the hub says so.

What an attacker would try: a share of one server used on another server's port; a hub
token of their own (an API token) sent to the port as a port token or as Authorization;
staying in after the share is revoked.
"""

from __future__ import annotations

import httpx
import pytest

from tests.rig import ADMIN_TOKEN, browser_login, shoot, wait_for

CACHE_AGE = 1  # login_cache_max_age of this hub: a revoke counts within about this time


@pytest.fixture(scope="module")
def apps(make_app):
    return {"dash": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    config = f"""
        c.PortRoutes.ports = [{{"port": {apps["dash"].port}, "name": "dash", "access": "shared"}}]
        c.PortRoutes.default_startup_behavior = "random"
        c.PortRoutes.login_cache_max_age = {CACHE_AGE}
        # users may share their servers with users and groups they name: the user role
        # redefined as JupyterHub 5's sharing docs do (JupyterHub 6 then ignores extra_user_scopes)
        c.JupyterHub.load_roles.append({{"name": "user", "scopes": ["self", "shares!user", "read:users:name", "read:groups:name"]}})
        c.JupyterHub.load_groups = {{
            "physics": {{"users": ["dave"]}}, "viewers": {{"users": ["frank"]}}, "support": {{"users": ["sue"]}}
        }}
        c.JupyterHub.load_roles.append(
            {{"name": "alice-viewers", "scopes": ["access:servers!user=alice"], "groups": ["viewers"]}}
        )
        # a role with access to every server: its members get in, and alice is not told who they are
        c.JupyterHub.load_roles.append({{"name": "support", "scopes": ["access:servers"], "groups": ["support"]}})
    """
    hub = make_hub([], "\n".join(line.strip() for line in config.splitlines()))
    hub.tokens = {user: hub.user_token(user) for user in ("alice", "bob", "carol", "dave", "erin")}
    hub.spawn("alice", "a")
    hub.spawn("alice", "b")
    return hub


def port_url(apps, server: str = "a") -> str:
    return f"/ports/alice/{server}/{apps['dash'].port}/"


def status(client: httpx.Client, path: str) -> int:
    """What a browser logged into the hub gets on a port (through the hub's OAuth)."""
    return client.get(path, follow_redirects=True).status_code


def becomes(client: httpx.Client, path: str, wanted: int, what: str, hub) -> None:
    """Wait until the port answers ``wanted``: the sidecar trusts an answer for CACHE_AGE."""
    wait_for(lambda: status(client, path) == wanted, 10 * CACHE_AGE + 5, what, hub.log_path, interval=0.3)


def share(hub, method: str, server: str = "a", **with_) -> None:
    """Alice shares (POST) or stops sharing (PATCH) her server through JupyterHub's API."""
    response = hub.api(method, f"/shares/alice/{server}", token=hub.tokens["alice"], json=with_)
    assert response.status_code == 200, response.text


def shared_port(hub, server: str = "a") -> dict:
    response = hub.proxytoken(hub.tokens["alice"], server=server, params={"format": "full"})
    assert response.status_code == 200, response.text
    return response.json()["ports"][0]


def test_a_share_opens_the_port_and_its_revoke_closes_it(hub, apps):
    bob, carol = hub.login("bob"), hub.login("carol")
    refused = bob.get(port_url(apps), follow_redirects=True)
    assert refused.status_code == 403 and "logged in as bob" in refused.text
    share(hub, "POST", user="bob")
    becomes(bob, port_url(apps), 200, "bob to get in once alice shares her server", hub)
    assert status(carol, port_url(apps)) == 403  # nobody shared anything with carol
    assert status(hub.login("alice"), port_url(apps)) == 200  # the owner, as always
    share(hub, "PATCH", user="bob")  # JupyterHub's revoke
    becomes(bob, port_url(apps), 403, "bob to be refused once the share is revoked", hub)


def test_groups_and_roles_and_the_pages_who_list(hub, apps):
    dave, frank = hub.login("dave"), hub.login("frank")
    # frank: the group viewers holds a role with access:servers!user=alice
    assert status(frank, port_url(apps)) == 200
    assert status(frank, port_url(apps, "b")) == 200
    assert status(dave, port_url(apps)) == 403
    port = shared_port(hub)
    assert port["access"] == "shared" and port["admits"] == ["owner", "token", "shared"]
    assert port["shared_with"] == {"users": [], "groups": ["viewers"], "all_servers": True}
    assert status(hub.login("sue"), port_url(apps)) == 200  # the support role, named to nobody
    share(hub, "POST", group="physics")
    becomes(dave, port_url(apps), 200, "dave (group physics) to get in once alice shares with physics", hub)
    assert shared_port(hub)["shared_with"]["groups"] == ["physics", "viewers"]
    assert shared_port(hub, "b")["shared_with"]["groups"] == ["viewers"]  # the share was for a
    share(hub, "PATCH", group="physics")
    becomes(dave, port_url(apps), 403, "dave to be refused once the group share is revoked", hub)
    assert shared_port(hub)["shared_with"]["groups"] == ["viewers"]


def test_a_share_of_one_server_and_hub_tokens_open_nothing_else(hub, apps):
    share(hub, "POST", user="bob")
    bob = hub.login("bob")
    becomes(bob, port_url(apps), 200, "bob to get into a, shared with him", hub)
    refused = bob.get(port_url(apps, "b"), follow_redirects=True)
    assert refused.status_code == 403 and "logged in as bob" in refused.text
    # bob's own hub token, wherever he puts it, is no credential of a port
    token = hub.tokens["bob"]
    seen = len(apps["dash"].received())
    url = hub.url + port_url(apps)
    for headers, params in (
        ({"X-Proxy-Token": token}, {}),
        ({"Authorization": f"token {token}"}, {}),
        ({"Authorization": f"Bearer {token}"}, {}),
        ({}, {"proxy_token": token}),
        ({}, {"token": token}),
    ):
        assert httpx.get(url, headers=headers, params=params, timeout=30).status_code == 403, (headers, params)
    assert len(apps["dash"].received()) == seen  # nothing reached the app
    # the hub answers who may access a server only to the sidecar's login tokens: not to bob's
    # API token (not even about a server shared with him), another user's, a service's, nobody's
    ask = "/jhproxy-routes/access/alice/"
    for credential in (token, hub.tokens["carol"], ADMIN_TOKEN):
        for server in ("a", "b"):
            answer = hub.api("GET", ask + server, token=credential)
            assert answer.status_code == 403 and "access" not in answer.json(), answer.text
    assert httpx.get(f"{hub.url}/hub/api{ask}a", timeout=30).status_code == 403
    # the port token still opens a shared port (the server is in token mode)
    port_token = hub.proxytoken(hub.tokens["alice"], server="a").json()
    assert httpx.get(url, headers={"X-Proxy-Token": port_token}, timeout=30).status_code == 200
    share(hub, "PATCH", user="bob")


def test_a_share_code_accepted_in_chromium(browser, hub, apps):
    created = hub.api("POST", "/share-codes/alice/a", token=hub.tokens["alice"], json={})
    assert created.status_code == 200, created.text
    context, page = browser_login(browser, hub.url, "erin")
    page.goto(port_url(apps))
    assert "logged in as erin" in page.text_content("body")
    page.goto(created.json()["accept_url"])
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "accept-share" not in url)

    def erin_in() -> bool:
        page.goto(port_url(apps))
        return f'"path": "{port_url(apps)}"' in page.text_content("body")

    wait_for(erin_in, 10 * CACHE_AGE + 5, "erin to get in after accepting the share code", hub.log_path, interval=0.3)
    shoot(page, "shared-port-by-share-code")
    context.close()
    # alice's page says who that is now
    context, page = browser_login(browser, hub.url, "alice")
    page.goto("/hub/proxytoken/")
    who = page.locator('section[data-server="a"] .jhpr-admits').first
    who.wait_for()
    assert who.text_content() == "you, token holders, erin, group viewers, the hub's admins"
    assert page.locator('section[data-server="a"] .jhpr-ports select').first.input_value() == "shared"
    shoot(page, "shared-port-who-list")
    context.close()


def test_home_page_lists_the_ports_of_each_running_server(browser, hub, apps):
    context, page = browser_login(browser, hub.url, "alice")  # lands on /hub/home
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=hub.url)
    rows = {}
    for server in ("a", "b"):
        rows[server] = page.locator(f'.jhpr-home-server[data-server="{server}"] tr[data-port="{apps["dash"].port}"]')
        rows[server].wait_for()
        assert rows[server].locator("a").get_attribute("href") == hub.url + port_url(apps, server)
        assert rows[server].locator(".jhpr-home-access").text_content() == "shared"
    shoot(page, "home-page-ports")
    rows["b"].locator(".jhpr-home-copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == hub.url + port_url(apps, "b")
    with context.expect_page() as opened:
        rows["a"].locator("a").click()
    app_page = opened.value
    app_page.wait_for_load_state()
    assert f'"path": "{port_url(apps)}"' in app_page.text_content("body")  # through the hub's OAuth
    # "Ports" in the navbar leads to the port page; no Services menu to know about
    page.click("nav >> text=Ports")
    page.wait_for_url(f"{hub.url}/hub/proxytoken/")
    assert page.locator("nav >> text=Services").count() == 0
    context.close()


def test_the_servers_ports_api_is_its_owners_alone(hub):
    """Sue (a role with access to every server) gets into alice's server, but not to its
    ports' settings: the port token, and changes made with the server's own token."""
    sue = hub.user_token("sue")
    url = f"{hub.url}/user/alice/a/jhproxy-routes/ports"
    assert (
        httpx.get(f"{hub.url}/user/alice/a/api/status", headers={"Authorization": f"token {sue}"}, timeout=30).status_code == 200
    )
    for method, body in (("GET", None), ("POST", {"mode": "random"})):
        response = httpx.request(method, url, headers={"Authorization": f"token {sue}"}, json=body, timeout=30)
        assert response.status_code == 403 and '"token"' not in response.text, (method, response.text)
    own = httpx.get(url, headers={"Authorization": f"token {hub.tokens['alice']}"}, timeout=30)
    assert own.status_code == 200 and own.json()["user"] == "alice", own.text
