"""Abuse: guessing tokens is rate limited per client and port, and the audit log records who
changed what and which requests were refused. A real hub, CHP, sidecar and app.

Clients come from two loopback addresses (127.0.0.1 and 127.0.0.2), so CHP sees two clients.
"""

import json

import httpx
import pytest

LIMIT = 3


@pytest.fixture(scope="module")
def apps(make_app):
    return {"a": make_app(), "b": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    return make_hub([apps["a"].port, apps["b"].port], f"c.PortRoutes.bad_token_limit = {LIMIT}")


@pytest.fixture(scope="module")
def token(hub):
    api_token = hub.user_token("mallory-target")
    hub.spawn("mallory-target")
    return hub.proxytoken(api_token, "POST", content="random").json()


def client_from(hub, address: str) -> httpx.Client:
    return httpx.Client(base_url=hub.url, transport=httpx.HTTPTransport(local_address=address), timeout=30)


def audit(hub) -> list[dict]:
    return [json.loads(line) for line in (hub.dir / "jhproxy-routes-audit.jsonl").read_text().splitlines()]


def test_guessing_is_rate_limited_per_client_and_port(hub, apps, token):
    url_a = f"/ports/mallory-target/{apps['a'].port}/x"
    url_b = f"/ports/mallory-target/{apps['b'].port}/x"
    seen = len(apps["a"].received())
    with client_from(hub, "127.0.0.2") as attacker:
        # a forged X-Forwarded-For does not make a new client: CHP appends the real address
        for i in range(LIMIT):
            response = attacker.get(url_a, headers={"X-Proxy-Token": f"guess{i}", "X-Forwarded-For": f"10.9.9.{i}"})
            assert response.status_code == 403, response.text
        response = attacker.get(url_a, headers={"X-Proxy-Token": "guess-more"})
        assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
        assert "Traceback" not in response.text and "Too many wrong tokens" in response.json()["message"]
        # the count is per server token: its other ports are closed to this client's guesses too
        assert attacker.get(url_b, headers={"X-Proxy-Token": "guess-b"}).status_code == 429
        assert len(apps["a"].received()) == seen, "a refused request reached the app"
        # the right token is never refused: clients behind one address (a NAT) share the count
        assert attacker.get(url_a, headers={"X-Proxy-Token": token}).status_code == 200
    with client_from(hub, "127.0.0.1") as owner:  # another client is not locked out
        assert owner.get(url_a, headers={"X-Proxy-Token": token}).status_code == 200


def test_audit_log_has_changes_and_denials_but_no_secrets(hub, apps, token):
    with client_from(hub, "127.0.0.1") as client:
        assert (
            client.get(f"/ports/mallory-target/{apps['b'].port}/q", params={"proxy_token": "leaked-guess", "k": "v"}).status_code
            == 403
        )
    entries = audit(hub)
    change = next(e for e in entries if e["event"] == "settings changed")
    assert change["user"] == "mallory-target" and change["server"] == ""
    assert change["mode"] == ["disabled", "token"] and change["new_token"] is True
    assert change["client"] == "127.0.0.1" and change["credential"] == "token"
    denials = [e for e in entries if e["event"] == "denied"]
    reasons = [e["reason"] for e in denials]
    assert reasons.count("wrong token") >= LIMIT - 1 and "wrong token (now rate limited)" in reasons
    assert "rate limited" in reasons
    limited = next(e for e in denials if e["reason"] == "rate limited")
    assert limited["client"] == "127.0.0.2" and limited["port"] == apps["a"].port and limited["owner"] == "mallory-target"
    assert {e["port"] for e in denials if e["reason"] == "rate limited"} == {apps["a"].port, apps["b"].port}
    last = denials[-1]
    assert last["path"] == f"/ports/mallory-target/{apps['b'].port}/q" and last["client"] == "127.0.0.1"
    text = (hub.dir / "jhproxy-routes-audit.jsonl").read_text()
    assert token not in text and "leaked-guess" not in text and "guess0" not in text
