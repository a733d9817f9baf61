"""Hub login on restricted ports, and /hub/proxytoken/ for browsers, over plain HTTP.

What an attacker would try: a session cookie forged, altered, or moved to another port;
an OAuth callback with a state that is not theirs; a session that outlives the hub
logout; another user's login on an owner-only port; a page request dressed as an API
call. And the example notebook, run with a real server's own API token.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jhproxy_routes.sidecar.login import TICKET_QUERY, session_cookie_name
from tests.rig import REPO, assert_no_credentials, wait_for

CALLBACK = "/services/jhproxy-routes/oauth_callback"


@pytest.fixture(scope="module")
def apps(make_app):
    return {"api": make_app(), "team": make_app(), "staff": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    ports = [
        {"port": apps["api"].port, "name": "api"},
        {"port": apps["team"].port, "access": "owner"},
        {"port": apps["staff"].port, "access": "group:staff"},
    ]
    config = """
        c.PortRoutes.default_startup_behavior = "random"
        c.PortRoutes.login_cache_max_age = 1
        c.JupyterHub.public_url = f"http://127.0.0.1:{c.JupyterHub.port}"
    """
    hub = make_hub(ports, "\n".join(line.strip() for line in config.splitlines()))
    for user in ("alice", "bob", "carol"):
        hub.user_token(user)
    assert hub.api("POST", "/groups/staff", json={"users": ["bob"]}).status_code == 201
    hub.spawn("alice")
    return hub


def port_url(apps, which: str) -> str:
    return f"/ports/alice/{apps[which].port}/"


def session_cookie(client: httpx.Client):
    cookies = [c for c in client.cookies.jar if c.name.startswith("jhproxy-routes-session-")]
    assert len(cookies) == 1, cookies
    return cookies[0]


def open_port(client: httpx.Client, path: str) -> httpx.Response:
    """Open a port as a browser does: follow the redirects through the hub's OAuth."""
    return client.get(path, follow_redirects=True)


def test_owner_login_reaches_the_port_and_nothing_leaks(hub, apps):
    alice = hub.login("alice")
    response = open_port(alice, port_url(apps, "team"))
    assert response.status_code == 200, response.text
    # to the hub, back to the sidecar's callback, back to the port with a ticket, to the page
    assert [r.url.path for r in response.history] == [
        port_url(apps, "team"),
        "/hub/api/oauth2/authorize",
        CALLBACK,
        port_url(apps, "team"),
    ]
    ticket = response.history[-1].url.params[TICKET_QUERY]
    cookie = session_cookie(alice)
    assert cookie.path == port_url(apps, "team").rstrip("/")  # no trailing slash: the slash-less URL gets it too
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert not [c for c in alice.cookies.jar if c.name.startswith("jhproxy-routes-state-")]  # used up
    assert json.loads(response.text)["path"] == port_url(apps, "team")
    assert TICKET_QUERY not in response.text
    secrets_ = [cookie.value, ticket, alice.cookies.get("jupyterhub-hub-login")]
    assert_no_credentials(apps["team"].received(), secrets_)
    # a script (no text/html) without a token is refused, not redirected
    assert httpx.get(hub.url + port_url(apps, "team"), timeout=30).status_code == 403


def test_session_cookie_cannot_be_forged_altered_or_moved(hub, apps):
    alice = hub.login("alice")
    open_port(alice, port_url(apps, "team"))
    cookie = session_cookie(alice)
    team = hub.url + port_url(apps, "team")

    def status(url, name, value):  # the port's page opened by a browser with that cookie
        return httpx.get(url, headers={"Cookie": f"{name}={value}", "Upgrade-Insecure-Requests": "1"}, timeout=30).status_code

    assert status(team, cookie.name, cookie.value) == 200  # the cookie alone is the credential
    altered = cookie.value[:-2] + ("aa" if not cookie.value.endswith("aa") else "bb")
    assert status(team, cookie.name, altered) == 403
    assert status(team, cookie.name, "2|1:0|10:1|5:value|4:dGVzdA==|" + "0" * 64) == 403
    # moved to another port of alice's, under that port's cookie name: signed for one route only
    api_name = session_cookie_name(port_url(apps, "api").rstrip("/"))
    assert api_name != cookie.name
    assert status(hub.url + port_url(apps, "api"), api_name, cookie.value) == 403


def test_session_cookie_holds_no_readable_token_and_frames_cannot_log_in(hub, apps):
    alice = hub.login("alice")
    open_port(alice, port_url(apps, "team"))
    cookie = session_cookie(alice)
    # the hub token inside is encrypted: an app that ever sees the cookie learns nothing
    assert b'"token"' not in base64.urlsafe_b64decode(cookie.value + "==")
    # a page of another port cannot make the browser log in inside a hidden frame
    framed = alice.get(port_url(apps, "api"), headers={"Sec-Fetch-Dest": "iframe"})
    assert framed.status_code == 403
    # a websocket from another site may not ride on the login; from the port's own page it may
    ws = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Cookie": f"{cookie.name}={cookie.value}",
    }
    url = hub.url + port_url(apps, "team") + "ws"
    foreign = httpx.get(url, headers={**ws, "Origin": "http://evil.example"}, timeout=30)
    assert foreign.status_code == 403 and "another site" in foreign.text
    with httpx.stream("GET", url, headers={**ws, "Origin": hub.url}, timeout=30) as own:
        assert own.status_code == 101


def test_callback_refuses_a_state_that_is_not_yours(hub, apps):
    mallory = hub.login("carol")
    start = mallory.get(port_url(apps, "team"))  # a real flow, stopped at the hub's door
    assert start.status_code == 302 and "/hub/api/oauth2/authorize" in start.headers["location"]
    for query in ("code=x&state=not-the-state", "code=x", "state=abc", "error=access_denied&state=abc"):
        response = httpx.get(f"{hub.url}{CALLBACK}?{query}", headers={"Accept": "text/html"}, timeout=30)
        assert response.status_code == 400, (query, response.text)
        assert "text/html" in response.headers["content-type"] and "Traceback" not in response.text
        assert "jhproxy-routes-session" not in response.headers.get("set-cookie", "")
    # mallory's login link, followed by alice (login CSRF): the hub gives alice's browser a
    # code and the callback a ticket for the port, but her browser did not start this login
    alice = hub.login("alice")
    response = alice.get(start.headers["location"], follow_redirects=True)
    assert response.status_code == 400 and "started in another browser" in response.text
    assert response.url.path == port_url(apps, "team") and TICKET_QUERY in str(response.url)
    assert not [c for c in alice.cookies.jar if c.name.startswith("jhproxy-routes-session-")]
    # a ticket is no session cookie, and no other port's ticket
    ticket = response.url.params[TICKET_QUERY]
    cookie = session_cookie_name(port_url(apps, "team").rstrip("/"))
    assert httpx.get(hub.url + port_url(apps, "team"), headers={"Cookie": f"{cookie}={ticket}"}, timeout=30).status_code == 403
    other = alice.get(f"{port_url(apps, 'api')}?{TICKET_QUERY}={ticket}")
    assert other.status_code == 400 and "another port" in other.text


def test_other_users_and_groups(hub, apps):
    bob, carol = hub.login("bob"), hub.login("carol")
    response = open_port(bob, port_url(apps, "team"))
    assert response.status_code == 403 and "logged in as bob" in response.text
    # group:staff: bob is in it, carol is not, alice owns it
    assert open_port(bob, port_url(apps, "staff")).status_code == 200
    refused = open_port(carol, port_url(apps, "staff"))
    assert refused.status_code == 403 and "logged in as carol" in refused.text
    assert open_port(hub.login("alice"), port_url(apps, "staff")).status_code == 200


def test_hub_logout_ends_the_port_session(hub, apps):
    alice = hub.login("alice")
    assert open_port(alice, port_url(apps, "team")).status_code == 200
    cookie = session_cookie(alice)
    headers = {"Cookie": f"{cookie.name}={cookie.value}"}
    alice.get("/hub/logout")
    # the hub revoked the session's OAuth token; the sidecar asks again after 1 s
    wait_for(
        lambda: httpx.get(hub.url + port_url(apps, "team"), headers=headers, timeout=30).status_code == 403,
        15,
        "the port session to end after the hub logout",
        hub.log_path,
        interval=0.5,
    )


def test_page_for_browsers_json_for_everything_else(hub):
    alice_token = hub.user_token("alice")
    page = hub.login("alice").get("/hub/proxytoken/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'data-server=""' in page.text and "Ports of your servers" in page.text
    # a token-authenticated client gets JSON even when it asks for HTML
    api = hub.proxytoken(alice_token, headers={"Accept": "text/html"})
    assert api.headers["content-type"].startswith("application/json") and isinstance(api.json(), str)
    # not logged in: the page sends a browser to log in, the API answers 403 JSON
    anonymous = httpx.get(hub.url + "/hub/proxytoken/", headers={"Accept": "text/html"}, timeout=30)
    assert anonymous.status_code == 302 and "/hub/login" in anonymous.headers["location"]
    assert httpx.get(hub.url + "/hub/proxytoken/", timeout=30).status_code == 403
    # the page's own fetches (a browser marks them Sec-Fetch-Mode: cors): the login cookie
    # alone is refused, with JupyterHub's XSRF token accepted; the same for a POST
    client = hub.login("alice")
    client.get("/hub/proxytoken/")
    fetch = {"Accept": "application/json", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
    assert client.get("/hub/proxytoken/?format=full", headers=fetch).status_code == 403
    assert client.post("/hub/proxytoken/", content=b"random", headers=fetch).status_code == 403
    fetch["X-XSRFToken"] = client.cookies.get("_xsrf", path="/hub/")
    with_xsrf = client.get("/hub/proxytoken/?format=full", headers=fetch)
    assert with_xsrf.status_code == 200 and with_xsrf.json()["user"] == "alice"


def test_services_menu_link_leads_to_the_page(hub):
    response = httpx.get(hub.url + "/services/jhproxy-routes/", headers={"Accept": "text/html"}, timeout=30)
    # this hub has a public_url: the hub's page by its public URL (under subdomain_host
    # the sidecar's own pages are on another host)
    assert response.status_code == 302 and response.headers["location"] == hub.url + "/hub/proxytoken/"


def test_example_notebook_with_the_servers_own_token(hub, apps):
    """Run the notebook's code, in order, with the env of alice's real server process."""
    env = server_env(hub)
    notebook = json.loads((REPO / "examples/proxytoken_api.ipynb").read_text())
    code = "\n\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    new_token = next(line.split(": ", 1)[1] for line in lines if line.startswith("new token:"))
    assert hub.proxytoken(hub.user_token("alice")).json() == new_token
    assert f"{apps['api'].port} http://127.0.0.1:{hub.port}/ports/alice/{apps['api'].port}/" in result.stdout
    assert "200 b'{" in result.stdout and "without the token: 403" in result.stdout
    assert f"{apps['api'].port} is now open to: owner, token, users" in result.stdout


def server_env(hub) -> dict:
    """The environment of alice's jupyterhub-singleuser process: its real API token."""
    for pid in hub.child_pids("jupyterhub-singleuser"):
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        if env.get("JUPYTERHUB_USER") == "alice":
            return {"PATH": os.environ["PATH"], **{k: v for k, v in env.items() if k.startswith("JUPYTERHUB_")}}
    raise AssertionError("alice's server process was not found")
