"""The admin's policy and tokens that expire, against a real hub, CHP, sidecar, servers and
apps. The policy: users in the group ``publishers`` may make ports public and allow anyone,
others may not (hooks, as an admin writes them), and one port has a rule of its own; a
change outside it is refused by the API, the CLI and the page, and a setting made before it
was tightened (here: a user taken out of the group) is narrowed at the next reconciliation.
Tokens: made with a lifetime or capped by ``token_max_age``, refused by the sidecar from the
moment they expire (its own clock: real waiting of a couple of seconds, no mocked time).
"""

import asyncio
import json
import re
import time

import httpx
import pytest

from tests.rig import ADMIN_TOKEN, wait_for

NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none", "Accept": "text/html"}

MAX_AGE = 3600


POLICY = f"""
c.JupyterHub.cleanup_servers = False  # the servers outlive a restart of the hub
c.PortRoutes.token_max_age = {MAX_AGE}

def publisher(user):
    return any(group.name == "publishers" for group in user.groups)

def allowed_access(user, port):
    return ["public", "users", "server", "owner"] if publisher(user) else ["users", "server", "owner"]

async def allowed_modes(user, servername):
    return ["allow_all", "random"] if publisher(user) else ["random"]

c.PortRoutes.allowed_access = allowed_access
c.PortRoutes.allowed_modes = allowed_modes
"""


@pytest.fixture(scope="module")
def apps(make_app):
    return {"api": make_app(), "open": make_app(), "locked": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    locked = {"port": apps["locked"].port, "access": "users", "allowed_access": ["owner"]}
    return make_hub([apps["api"].port, apps["open"].port, locked], POLICY)


def port(hub, apps, which="api", user="alice"):
    return f"{hub.url}/ports/{user}/{apps[which].port}/data"


def new_token(hub, alice, **body) -> dict:
    response = hub.proxytoken(alice, "POST", params={"format": "full"}, json={"mode": "random", **body})
    assert response.status_code == 200, response.text
    return response.json()


def denied_count(hub, reason: str) -> float:
    """The sidecar's count of refusals for ``reason``, from its metrics."""
    text = hub.get("/services/jhproxy-routes/metrics", headers={"Authorization": f"token {ADMIN_TOKEN}"}).text
    match = re.search(rf'jhproxy_routes_sidecar_denied_total{{reason="{reason}"}} ([0-9.e+]+)', text)
    return float(match[1]) if match else 0.0


@pytest.mark.parametrize(
    "expires_in, message",
    [
        (-1, "positive whole number"),
        (0, "positive whole number"),
        (MAX_AGE + 1, f"at most {MAX_AGE} seconds (c.PortRoutes.token_max_age)"),
        (10**30, f"at most {MAX_AGE} seconds (c.PortRoutes.token_max_age)"),
        ("60", "positive whole number"),
        (1.5, "positive whole number"),
        (True, "positive whole number"),
        (None, "positive whole number"),
        ([60], "positive whole number"),
    ],
)
def test_a_bad_lifetime_is_refused_naming_the_limit(hub, apps, alice, expires_in, message):
    before = settings_of(hub, alice)
    response = hub.proxytoken(alice, "POST", json={"mode": "random", "expires_in": expires_in})
    assert response.status_code == 400 and message in response.json()["message"], response.text
    assert "Traceback" not in response.text
    assert settings_of(hub, alice) == before  # nothing changed


def test_a_lifetime_goes_only_with_a_new_token(hub, alice):
    for body in ({"expires_in": 60}, {"mode": "allow_all", "expires_in": 60}, {"mode": "disabled", "expires_in": 60}):
        response = hub.proxytoken(alice, "POST", json=body)
        assert response.status_code == 400 and "expires_in goes with" in response.json()["message"], body


def test_an_expired_token_is_refused_at_once_and_a_new_one_is_one_call_away(hub, apps, alice):
    settings = new_token(hub, alice, expires_in=4)  # long enough to use it twice on a loaded machine
    token, url = settings["token"], port(hub, apps)
    assert 0 < settings["token_expires_in"] <= 4 and settings["token_expires"].endswith("Z")
    assert settings["token_max_age"] == MAX_AGE
    assert httpx.get(url, headers={"X-Proxy-Token": token}).status_code == 200
    assert httpx.get(url, params={"proxy_token": token}).status_code == 200
    # a browser trades it for the port's cookie, which lives no longer than the token
    traded = httpx.get(url, params={"proxy_token": token}, headers=NAVIGATE)
    assert traded.status_code == 302, traded.text
    cookie = {"Cookie": traded.headers["set-cookie"].partition(";")[0], "Upgrade-Insecure-Requests": "1"}  # the page again
    assert httpx.get(url, headers=cookie).status_code == 200
    wrong = httpx.get(url, headers={"X-Proxy-Token": token[:-1] + "x"})
    expired_before = denied_count(hub, "token expired")
    seen = len(apps["api"].received())
    wait_for(lambda: hub.proxytoken(alice, params={"format": "full"}).json()["token_expires_in"] == 0, 6, "the expiry")
    time.sleep(0.2)  # the API rounds the seconds left up; the sidecar compares to the instant
    for request in ({"headers": {"X-Proxy-Token": token}}, {"params": {"proxy_token": token}}):
        response = httpx.get(url, **request)
        # refused exactly as a wrong token is: nothing tells a caller it was once right
        assert (response.status_code, response.json()) == (wrong.status_code, wrong.json()), request
    expired_cookie = httpx.get(url, headers=cookie)
    assert expired_cookie.status_code == 403, "the token's cookie outlived the token"
    no_trade = httpx.get(url, params={"proxy_token": token}, headers=NAVIGATE)
    assert no_trade.status_code == 403 and "set-cookie" not in no_trade.headers  # an expired token is never traded
    assert len(apps["api"].received()) == seen, "an expired token reached the app"
    assert denied_count(hub, "token expired") == expired_before + 3  # header, query, the navigation
    audit = [json.loads(line) for line in (hub.dir / "jhproxy-routes-audit.jsonl").read_text().splitlines()]
    reasons = [e["reason"] for e in audit if e["event"] == "denied"][-4:]
    assert reasons == ["token expired", "token expired", "no credentials", "token expired"], reasons
    # the seed GET still answers the token; the full view says it expired
    assert hub.proxytoken(alice).json() == token
    fresh = new_token(hub, alice)  # no lifetime asked: token_max_age caps it
    assert MAX_AGE - 5 <= fresh["token_expires_in"] <= MAX_AGE
    assert httpx.get(url, headers={"X-Proxy-Token": fresh["token"]}).status_code == 200
    assert httpx.get(url, headers={"X-Proxy-Token": token}).status_code == 403


def test_the_seed_protocol_keeps_working_capped_by_the_max_age(hub, apps, alice):
    token = hub.proxytoken(alice, "POST", content="random").json()
    assert isinstance(token, str) and hub.proxytoken(alice).json() == token
    settings = hub.proxytoken(alice, params={"format": "full"}).json()
    assert MAX_AGE - 5 <= settings["token_expires_in"] <= MAX_AGE
    assert httpx.get(port(hub, apps), headers={"X-Proxy-Token": token}).status_code == 200
    # the other modes have no expiry
    hub.proxytoken(alice, "POST", content="disabled")
    settings = hub.proxytoken(alice, params={"format": "full"}).json()
    assert (settings["token_expires"], settings["token_expires_in"]) == (None, None)


def test_the_cli_makes_a_token_with_a_lifetime(hub, apps, alice):
    from tests.test_cli import run

    result = run("set", "alice", "--mode", "random", "--expires-in", "600", token=alice, hub=hub)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^expires: \S+Z \(in (59[0-9]|600) s\)$", result.stdout, re.M), result.stdout
    result = run("set", "alice", "--mode", "random", "--expires-in", str(MAX_AGE + 1), token=alice, hub=hub)
    assert result.returncode == 1 and "token_max_age" in result.stderr and "Traceback" not in result.stderr


async def test_a_websocket_let_in_by_a_token_ends_when_the_token_expires(hub, apps, alice):
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    token = (await asyncio.to_thread(new_token, hub, alice, expires_in=4))["token"]
    url = port(hub, apps).replace("http://", "ws://").replace("/data", "/ws")
    conn = await websocket_connect(HTTPRequest(url, headers={"X-Proxy-Token": token}))
    # and one of the port's own pages, let in by the cookie the token was traded for
    traded = await asyncio.to_thread(httpx.get, port(hub, apps), params={"proxy_token": token}, headers=NAVIGATE)
    page = {"Cookie": traded.headers["set-cookie"].partition(";")[0], "Origin": hub.url}
    by_cookie = await websocket_connect(HTTPRequest(url, headers=page))
    for ws in (conn, by_cookie):
        ws.write_message("before")
        assert await ws.read_message() == "before"
    assert await asyncio.wait_for(conn.read_message(), 10) is None, "the websocket outlived its token"
    assert await asyncio.wait_for(by_cookie.read_message(), 5) is None, "the cookie's websocket outlived the token"
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(HTTPRequest(url, headers={"X-Proxy-Token": token}))
    assert refused.value.code == 403


# ---- the policy ------------------------------------------------------------------------
def settings_of(hub, token, user=None) -> dict:
    """The settings object, without what the in-server part reports listening (news from the
    server, which may come in between two reads; not a setting)."""
    params = {"format": "full", **({"user": user} if user else {})}
    settings = hub.proxytoken(token, params=params).json()
    for port in settings["ports"]:
        port.pop("listening", None)
    return settings


def access_of(settings: dict) -> dict:
    return {p["port"]: p["access"] for p in settings["ports"]}


def test_a_change_the_policy_forbids_is_refused_by_the_api_naming_the_rule(hub, apps, alice):
    api, locked = str(apps["api"].port), str(apps["locked"].port)
    before = settings_of(hub, alice)
    seen = len(apps["api"].received())
    for body, status, message in [
        ({"ports": {api: "public"}}, 403, f"Port {api}: the visibility public is not allowed here (c.PortRoutes.allowed_access)"),
        ({"mode": "random", "ports": {api: "public"}}, 403, "c.PortRoutes.allowed_access"),  # nothing of it is made
        ({"ports": {locked: "server"}}, 403, f"(c.PortRoutes.ports, port {locked}: allowed_access)"),
        ({"ports": {locked: "public"}}, 403, f"port {locked}: allowed_access"),
        ({"mode": "allow_all"}, 403, "The token mode allow_all is not allowed here (c.PortRoutes.allowed_modes)"),
        ("allow_all", 403, "c.PortRoutes.allowed_modes"),  # the seed's body
        ('"allow_all"', 403, "c.PortRoutes.allowed_modes"),  # the seed's body, as JSON
        (" allow_all\n", 403, "c.PortRoutes.allowed_modes"),
        # what else an attacker might send: refused as malformed, never taken as public
        (f'{{"ports": {{"{api}": "owner", "{api}": "public"}}}}', 403, "c.PortRoutes.allowed_access"),  # the last key counts
        ({"ports": {api: "PUBLIC"}}, 400, "access must be one of"),
        ({"ports": {api: "Public "}}, 400, "access must be one of"),
        ({"ports": {api: ["public"]}}, 400, "access must be one of"),
        ({"ports": {api: {"access": "public"}}}, 400, "access must be one of"),
        ({"ports": [[api, "public"]]}, 400, "ports must be an object"),
        ({"access": "public"}, 400, "Unknown key"),
        ({"ports": {api: "server"}, "access": {api: "public"}}, 400, "Unknown key"),
        ({"ports": {f"0{api}": "public"}}, 400, "not in the allow-list"),
        ({"mode": "ALLOW_ALL"}, 400, "mode must be one of"),
        ('["allow_all"]', 400, "Invalid action"),
        ("ALLOW_ALL", 400, "Invalid action"),
    ]:
        kwargs = {"content": body} if isinstance(body, str) else {"json": body}
        response = hub.proxytoken(alice, "POST", **kwargs)
        assert response.status_code == status and message in response.json()["message"], (body, response.text)
        assert "Traceback" not in response.text
    assert settings_of(hub, alice) == before  # nothing changed, no new token
    assert hub.get(f"/ports/alice/{api}/data").status_code == 403
    assert len(apps["api"].received()) == seen
    # the hub's admin changes ports under the same policy; the admin's own settings are allowed
    response = hub.proxytoken(ADMIN_TOKEN, "POST", params={"user": "alice"}, json={"ports": {api: "public"}})
    assert response.status_code == 403 and "c.PortRoutes.allowed_access" in response.json()["message"]
    for value in ("owner", "users", "disabled", "users"):  # users: the port's own access in ports
        assert hub.proxytoken(alice, "POST", json={"ports": {locked: value}}).status_code == 200, value


def test_the_api_says_what_is_allowed(hub, apps, alice):
    settings = settings_of(hub, alice)
    allowed = {p["port"]: p["allowed_access"] for p in settings["ports"]}
    assert allowed[apps["api"].port] == ["users", "server", "owner", "disabled"]
    assert allowed[apps["locked"].port] == ["users", "owner", "disabled"]
    assert settings["allowed_modes"] == ["disabled", "random"]


def test_the_cli_is_refused_naming_the_rule(hub, apps, alice):
    from tests.test_cli import run

    result = run("set", "alice", "--port", f"{apps['api'].port}=public", token=alice, hub=hub)
    assert result.returncode == 1 and "403" in result.stderr and "c.PortRoutes.allowed_access" in result.stderr, result
    result = run("set", "alice", "--mode", "allow_all", token=alice, hub=hub)
    assert result.returncode == 1 and "c.PortRoutes.allowed_modes" in result.stderr and "Traceback" not in result.stderr
    assert settings_of(hub, alice)["mode"] != "allow_all"


def test_a_setting_the_policy_no_longer_allows_is_narrowed_at_the_next_reconciliation(hub, apps, alice):
    hub.api("POST", "/groups/publishers")
    assert hub.api("POST", "/groups/publishers/users", json={"users": ["alice"]}).status_code == 200
    api, open_, locked = (apps[a].port for a in ("api", "open", "locked"))
    body = {"mode": "allow_all", "ports": {str(api): "public", str(open_): "users", str(locked): "owner"}}
    response = hub.proxytoken(alice, "POST", json=body)
    assert response.status_code == 200, response.text
    assert hub.get(f"/ports/alice/{api}/data").status_code == 200  # anyone
    assert hub.get(f"/ports/alice/{open_}/data").status_code == 200  # allow_all lets anyone in
    # alice leaves the group: her hooks now forbid public and allow_all; the next pass narrows
    assert hub.api("DELETE", "/groups/publishers/users", json={"users": ["alice"]}).status_code == 200
    settings = wait_for(lambda: (s := settings_of(hub, alice))["mode"] == "token" and s, 15, "the narrowing", hub.log_path)
    # each to the most open setting still allowed, never a more open one
    assert access_of(settings) == {api: "users", open_: "users", locked: "owner"}
    wait_for(lambda: hub.get(f"/ports/alice/{api}/data").status_code == 403, 5, "the port to close")
    assert hub.get(f"/ports/alice/{open_}/data").status_code == 403
    # the new token (mode random: the most open mode allowed below allow_all) opens the ports
    assert hub.get(f"/ports/alice/{api}/data", headers={"X-Proxy-Token": settings["token"]}).status_code == 200
    audit = [json.loads(line) for line in (hub.dir / "jhproxy-routes-audit.jsonl").read_text().splitlines()]
    (narrowed,) = [e for e in audit if e["event"] == "settings narrowed"]
    assert (narrowed["user"], narrowed["by"], narrowed["mode"]) == ("alice", "policy", ["allow_all", "token"])
    assert narrowed["ports"] == {str(api): ["public", "users"]}
    assert f"settings of alice/ narrowed to the policy: mode allow_all -> token, port {api} public -> users" in hub.log()
    # and it stays so: the next passes find nothing to narrow
    time.sleep(2.5)
    assert (
        sum(
            e["event"] == "settings narrowed"
            for e in map(json.loads, (hub.dir / "jhproxy-routes-audit.jsonl").read_text().splitlines())
        )
        == 1
    )


def test_the_page_offers_only_what_the_policy_allows_and_shows_the_expiry(browser, hub, apps, alice):
    from playwright.sync_api import expect

    from tests.rig import browser_login, shoot

    context, page = browser_login(browser, hub.url, "alice")
    page.goto("/hub/proxytoken/")
    section = page.locator(".jhpr-server[data-server='']")
    api = section.locator(f'tr[data-port="{apps["api"].port}"] select')
    expect(api).to_be_visible()
    options = lambda select: select.locator("option").evaluate_all("os => os.map(o => o.value)")  # noqa: E731
    assert "public" not in options(api) and {"users", "server", "owner"} <= set(options(api))
    locked = section.locator(f'tr[data-port="{apps["locked"].port}"] select')
    assert set(options(locked)) == {"users", "owner", "disabled"}
    expect(section.locator("[data-action=allow_all]")).to_be_hidden()
    expect(section.locator("[data-action=random]")).to_be_visible()
    # a token for a quarter of an hour: the page shows when it expires
    lifetime = section.locator(".jhpr-lifetime")
    assert options(lifetime)[0] == str(MAX_AGE)  # the longest allowed, unless a shorter one is chosen
    assert options(lifetime)[1:] == ["900"]  # the shorter lifetimes on offer
    lifetime.select_option("900")
    section.locator("[data-action=random]").click()
    expect(section.locator(".jhpr-expiry")).to_contain_text("This token expires at")
    shoot(page, "proxytoken-page-policy")
    settings = settings_of(hub, alice)
    assert settings["mode"] == "token" and 0 < settings["token_expires_in"] <= 900
    context.close()


def test_lowering_the_max_age_shortens_the_tokens_already_made(hub, apps, alice):
    """Last in the module: the admin restarts the hub with a lower ``token_max_age``."""
    token, url = new_token(hub, alice)["token"], port(hub, apps)
    made = time.time()
    assert httpx.get(url, headers={"X-Proxy-Token": token}).status_code == 200
    hub.stop(leave_servers=True)
    with (hub.dir / "jupyterhub_config.py").open("a") as config:
        config.write("c.PortRoutes.token_max_age = 4\n")
    hub.start()
    try:
        time.sleep(max(0.0, made + 4 - time.time()))  # the token is now older than the new limit
        statuses = []

        def refused():
            statuses.append(httpx.get(url, headers={"X-Proxy-Token": token}).status_code)
            return statuses[-1] == 403

        wait_for(refused, 30, "the port to refuse the token", hub.log_path)
        assert 200 not in statuses, statuses
        settings = settings_of(hub, alice)
        assert settings["token"] == token and settings["token_expires_in"] == 0 and settings["token_max_age"] == 4
        response = hub.proxytoken(alice, "POST", json={"mode": "random", "expires_in": 5})
        assert response.status_code == 400 and "at most 4 seconds (c.PortRoutes.token_max_age)" in response.json()["message"]
        fresh = new_token(hub, alice)["token"]
        assert httpx.get(url, headers={"X-Proxy-Token": fresh}).status_code == 200
    finally:  # the server outlived the first hub process: stopped through the second
        hub.stop_server("alice")
