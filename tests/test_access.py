"""Who may call a port: modes, per-port access, tokens and the token API, checked on every
request by the real sidecar behind the real CHP, in front of a real app."""

import sqlite3

import httpx
import pytest

from tests.rig import PASSWORD, wait_for

UNAUTHORIZED = "Unauthorized access"


@pytest.fixture(scope="module")
def apps(make_app):
    return {"token": make_app(), "public": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    ports = [apps["token"].port, {"port": apps["public"].port, "access": "public"}]
    return make_hub(
        ports, "c.PortRoutes.shutdown_behavior = 'pass'\nc.PortRoutes.scope_cookies = False  # public ports go direct here"
    )


def port_url(hub, apps, which="token", user="alice"):
    return f"/ports/{user}/{apps[which].port}"


def test_new_server_starts_disabled(hub, apps, alice):
    # default_startup_behavior = disabled, as in jhproxy
    assert hub.proxytoken(alice).json() is None
    response = hub.get(port_url(hub, apps) + "/")
    assert response.status_code == 403
    assert "disabled" in response.json()["message"]


def test_allow_all_needs_no_token(hub, apps, alice):
    assert hub.proxytoken(alice, "POST", content="allow_all").json() == ""
    assert hub.proxytoken(alice).json() == ""
    assert hub.get(port_url(hub, apps) + "/x").status_code == 200
    # any token, right or wrong, is ignored (and still stripped)
    assert hub.get(port_url(hub, apps) + "/x", headers={"X-Proxy-Token": "whatever"}).status_code == 200


def test_token_mode_checks_every_request(hub, apps, alice):
    token = hub.proxytoken(alice, "POST", content="random").json()
    assert isinstance(token, str) and len(token) >= 22  # >= 128 bits, URL-safe base64
    assert hub.proxytoken(alice).json() == token
    url = port_url(hub, apps) + "/data"
    seen = len(apps["token"].received())
    for headers in ({}, {"X-Proxy-Token": ""}, {"X-Proxy-Token": token[:-1]}, {"X-Proxy-Token": token + "x"}):
        response = hub.get(url, headers=headers)
        assert response.status_code == 403 and UNAUTHORIZED in response.json()["message"], headers
    assert len(apps["token"].received()) == seen, "a refused request reached the app"
    # one keep-alive client: a good request, then a bad one on the same connection (CHP pools
    # connections to the sidecar across clients, so the check must be per request)
    with httpx.Client(base_url=hub.url) as client:
        assert client.get(url, headers={"X-Proxy-Token": token}).status_code == 200
        assert client.get(url).status_code == 403
        assert client.get(url, params={"proxy_token": token, "keep": "me"}).status_code == 200
    # the Authorization header belongs to the app: never consumed as the port token
    response = hub.get(url, headers={"Authorization": f"token {token}"})
    assert response.status_code == 403


def test_rotation_and_revocation_take_effect_when_the_post_returns(hub, apps, alice):
    url = port_url(hub, apps) + "/"
    first = hub.proxytoken(alice, "POST", content="random").json()
    assert hub.get(url, headers={"X-Proxy-Token": first}).status_code == 200
    second = hub.proxytoken(alice, "POST", content="random").json()
    assert second != first
    assert hub.get(url, headers={"X-Proxy-Token": first}).status_code == 403
    assert hub.get(url, headers={"X-Proxy-Token": second}).status_code == 200
    assert hub.proxytoken(alice, "POST", content="disabled").json() is None
    response = hub.get(url, headers={"X-Proxy-Token": second})
    assert response.status_code == 403 and "disabled" in response.json()["message"]


def test_public_port_and_per_port_override(hub, apps, alice):
    hub.proxytoken(alice, "POST", content="disabled")
    # the admin made one port public: it answers while the server is disabled
    assert hub.get(port_url(hub, apps, "public") + "/").status_code == 200
    assert hub.get(port_url(hub, apps) + "/").status_code == 403
    # the user opens the other one through the JSON form, then closes it again
    settings = hub.proxytoken(alice, "POST", json={"ports": {str(apps["token"].port): "public"}}).json()
    assert settings["mode"] == "disabled"
    by_port = {p["port"]: p for p in settings["ports"]}
    assert by_port[apps["token"].port]["effective_access"] == "public"
    assert hub.get(port_url(hub, apps) + "/").status_code == 200
    assert hub.port_routes()[port_url(hub, apps)]["target"] == f"http://127.0.0.1:{apps['token'].port}"
    hub.proxytoken(alice, "POST", json={"ports": {str(apps["token"].port): "server"}, "mode": "random"})
    assert hub.get(port_url(hub, apps) + "/").status_code == 403
    assert hub.port_routes()[port_url(hub, apps)]["target"] == hub.sidecar_url
    # and may close the admin's public port for their own server
    hub.proxytoken(alice, "POST", json={"ports": {str(apps["public"].port): "disabled"}})
    assert hub.get(port_url(hub, apps, "public") + "/").status_code == 403
    hub.proxytoken(alice, "POST", json={"ports": {str(apps["public"].port): "public"}})
    assert hub.get(port_url(hub, apps, "public") + "/").status_code == 200


@pytest.mark.parametrize(
    "body, message",
    [
        ("nope", "Invalid action"),
        ("", "Invalid action"),
        ('{"mode": "everyone"}', "mode must be one of"),
        ('{"ports": {"1": "public"}}', "not in the allow-list"),
        ('{"ports": "public"}', "ports must be an object"),
        ('{"color": "red"}', "Unknown key"),
        ("[1, 2]", "Invalid action"),
    ],
)
def test_token_api_refuses_bad_bodies(hub, alice, body, message):
    response = hub.proxytoken(alice, "POST", content=body)
    assert response.status_code == 400
    assert message in response.json()["message"]
    assert "Traceback" not in response.text


def test_token_api_per_port_value_checked(hub, apps, alice):
    response = hub.proxytoken(alice, "POST", json={"ports": {str(apps["token"].port): "everyone"}})
    assert response.status_code == 400 and "access must be one of" in response.json()["message"]


def test_token_api_auth(hub, apps, alice):
    assert hub.proxytoken("not-a-token").status_code == 403
    assert httpx.get(f"{hub.url}/hub/proxytoken/").status_code == 403
    assert hub.proxytoken(alice, server="nosuchserver").status_code == 404
    # a token made with only 'read:users!user' scope may not use the token API
    limited = hub.api("POST", "/users/alice/tokens", json={"scopes": ["read:users!user=alice"]}).json()["token"]
    response = hub.proxytoken(limited)
    assert response.status_code == 403 and "custom:jhproxy-routes:tokens" in response.json()["message"]


def test_token_api_from_a_browser_needs_xsrf(hub, alice):
    client = httpx.Client(base_url=hub.url, timeout=30)
    client.get("/hub/login")
    response = client.post("/hub/login", data={"username": "alice", "password": PASSWORD, "_xsrf": client.cookies.get("_xsrf")})
    assert response.status_code == 302
    xsrf = [c.value for c in client.cookies.jar if c.name == "_xsrf"][-1]
    fetch = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
    # a page's fetch() without the XSRF token is refused, even for a GET
    assert client.get("/hub/proxytoken/", headers=fetch).status_code == 403
    assert client.post("/hub/proxytoken/", json="random", headers=fetch).status_code == 403
    # with it, the browser reads and changes the token
    with_xsrf = {**fetch, "X-XSRFToken": xsrf}
    token = client.post("/hub/proxytoken/", json="random", headers=with_xsrf).json()
    assert client.get("/hub/proxytoken/", headers=with_xsrf).json() == token
    # a cross-site form post (text/plain) never counts as logged in
    response = client.post("/hub/proxytoken/", content="disabled", headers={**with_xsrf, "Content-Type": "text/plain"})
    assert response.status_code == 403


def test_other_users_token_opens_nothing(hub, apps, alice):
    alice_port_token = hub.proxytoken(alice, "POST", content="random").json()
    bob = hub.user_token("bob")
    hub.spawn("bob")
    bob_port_token = hub.proxytoken(bob, "POST", content="random").json()
    assert hub.get(port_url(hub, apps, user="bob") + "/", headers={"X-Proxy-Token": alice_port_token}).status_code == 403
    assert hub.get(port_url(hub, apps) + "/", headers={"X-Proxy-Token": bob_port_token}).status_code == 403
    assert hub.get(port_url(hub, apps) + "/", headers={"X-Proxy-Token": alice_port_token}).status_code == 200
    # bob's own API calls change bob's server only
    hub.proxytoken(bob, "POST", content="allow_all")
    assert hub.get(port_url(hub, apps) + "/").status_code == 403
    hub.stop_server("bob")


def test_tokens_are_stored_hashed_and_survive_a_hub_restart(hub, apps, alice):
    token = hub.proxytoken(alice, "POST", content="random").json()
    db = sqlite3.connect(hub.dir / "jhproxy_routes.sqlite")
    dump = "\n".join(db.iterdump())
    db.close()
    assert token not in dump and token.encode().hex() not in dump
    hub.stop_server("alice")
    hub.stop()
    hub.start()
    hub.spawn("alice")
    assert hub.proxytoken(alice).json() == token
    assert hub.get(port_url(hub, apps) + "/", headers={"X-Proxy-Token": token}).status_code == 200
    assert hub.get(port_url(hub, apps) + "/").status_code == 403


def test_without_crypt_key_the_token_is_shown_once(make_hub, make_app):
    app = make_app()
    hub = make_hub([app.port], crypt_key="")
    token = hub.user_token("nokey")
    hub.spawn("nokey")
    port_token = hub.proxytoken(token, "POST", content="random").json()
    assert hub.get(f"/ports/nokey/{app.port}/", headers={"X-Proxy-Token": port_token}).status_code == 200
    response = hub.proxytoken(token)
    assert response.status_code == 409
    assert "JUPYTERHUB_CRYPT_KEY" in response.json()["message"]
    full = hub.proxytoken(token, params={"format": "full"}).json()
    assert full["mode"] == "token" and full["token"] is None and full["token_readable"] is False


def test_startup_and_shutdown_behavior(make_hub, make_app):
    app = make_app()
    hub = make_hub(
        [app.port],
        """
        c.PortRoutes.default_startup_behavior = "random"
        c.PortRoutes.shutdown_behavior = "disable"
        """,
    )
    token = hub.user_token("seed")
    hub.spawn("seed")
    port_token = hub.proxytoken(token).json()
    assert isinstance(port_token, str) and port_token
    assert hub.get(f"/ports/seed/{app.port}/", headers={"X-Proxy-Token": port_token}).status_code == 200
    hub.stop_server("seed")
    assert hub.proxytoken(token).json() is None
    # a mode the user chose is kept at the next start: random applies only the first time
    hub.spawn("seed")
    assert hub.proxytoken(token).json() is None
    hub.stop_server("seed")


def test_sidecar_restart_fails_closed_then_recovers(hub, apps, alice):
    import os
    import signal

    token = hub.proxytoken(alice, "POST", content="random").json()
    url = port_url(hub, apps) + "/"
    [pid] = hub.child_pids("jhproxy_routes.sidecar")
    os.kill(pid, signal.SIGKILL)
    seen = len(apps["token"].received())
    response = hub.get(url, headers={"X-Proxy-Token": token})
    assert response.status_code in (502, 503)
    assert len(apps["token"].received()) == seen
    # the hub restarts its managed service; the reconciliation refills the table
    wait_for(lambda: hub.get(url, headers={"X-Proxy-Token": token}).status_code == 200, 60, "the sidecar back", hub.log_path)
    assert hub.get(url).status_code == 403
