"""Tokens that expire: made with a lifetime or capped by ``token_max_age``, shown with their
expiry by the API, and refused by the real sidecar behind the real CHP from the moment they
expire (its own clock: real waiting of a couple of seconds, no mocked time)."""

import asyncio
import json
import re
import time

import httpx
import pytest

from tests.rig import ADMIN_TOKEN, wait_for

MAX_AGE = 3600


@pytest.fixture(scope="module")
def apps(make_app):
    return {"api": make_app(), "open": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    return make_hub([apps["api"].port, apps["open"].port], f"c.PortRoutes.token_max_age = {MAX_AGE}")


@pytest.fixture(scope="module")
def alice(hub):
    token = hub.user_token("alice")
    hub.spawn("alice")
    return token


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
    before = hub.proxytoken(alice, params={"format": "full"}).json()
    response = hub.proxytoken(alice, "POST", json={"mode": "random", "expires_in": expires_in})
    assert response.status_code == 400 and message in response.json()["message"], response.text
    assert "Traceback" not in response.text
    assert hub.proxytoken(alice, params={"format": "full"}).json() == before  # nothing changed


def test_a_lifetime_goes_only_with_a_new_token(hub, alice):
    for body in ({"expires_in": 60}, {"mode": "allow_all", "expires_in": 60}, {"mode": "disabled", "expires_in": 60}):
        response = hub.proxytoken(alice, "POST", json=body)
        assert response.status_code == 400 and "expires_in goes with" in response.json()["message"], body


def test_an_expired_token_is_refused_at_once_and_a_new_one_is_one_call_away(hub, apps, alice):
    settings = new_token(hub, alice, expires_in=3)
    token, url = settings["token"], port(hub, apps)
    assert 0 < settings["token_expires_in"] <= 3 and settings["token_expires"].endswith("Z")
    assert settings["token_max_age"] == MAX_AGE
    assert httpx.get(url, headers={"X-Proxy-Token": token}).status_code == 200
    assert httpx.get(url, params={"proxy_token": token}).status_code == 200
    wrong = httpx.get(url, headers={"X-Proxy-Token": token[:-1] + "x"})
    expired_before = denied_count(hub, "token expired")
    seen = len(apps["api"].received())
    wait_for(lambda: hub.proxytoken(alice, params={"format": "full"}).json()["token_expires_in"] == 0, 5, "the expiry")
    time.sleep(0.2)  # the API rounds the seconds left up; the sidecar compares to the instant
    for request in ({"headers": {"X-Proxy-Token": token}}, {"params": {"proxy_token": token}}):
        response = httpx.get(url, **request)
        # refused exactly as a wrong token is: nothing tells a caller it was once right
        assert (response.status_code, response.json()) == (wrong.status_code, wrong.json()), request
    assert len(apps["api"].received()) == seen, "an expired token reached the app"
    assert denied_count(hub, "token expired") == expired_before + 2
    audit = [json.loads(line) for line in (hub.dir / "jhproxy-routes-audit.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in audit if e["event"] == "denied"][-2:] == ["token expired"] * 2
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
    hub.proxytoken(alice, "POST", content="allow_all")
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

    token = (await asyncio.to_thread(new_token, hub, alice, expires_in=3))["token"]
    url = port(hub, apps).replace("http://", "ws://").replace("/data", "/ws")
    conn = await websocket_connect(HTTPRequest(url, headers={"X-Proxy-Token": token}))
    conn.write_message("before")
    assert await conn.read_message() == "before"
    assert await asyncio.wait_for(conn.read_message(), 10) is None, "the websocket outlived its token"
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(HTTPRequest(url, headers={"X-Proxy-Token": token}))
    assert refused.value.code == 403
