"""The in-server part under a real hub (CHP, sidecar, ``jupyterhub-singleuser`` servers on
this machine): the Ports panel's API in the user's server, what the hub learns of what
listens, visibility changed from inside the server, and the hub's side of the reports seen
from an attacker's: only a user's own credential reports, for the user's own running server,
in a shape the hub checks. Containers, where the relay works, are ``test_loopback_relay.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from jhproxy_routes.interfaces import own_addresses
from tests.rig import ADMIN_TOKEN, BIN, REPO, free_port, free_ports, port_open, wait_for


@pytest.fixture(scope="module")
def ports():
    names = ("allowed", "idle", "other")
    found = dict(zip(names, (free_port() for _ in names), strict=True))
    found["range_first"] = free_ports(3)  # the range's three ports all its own
    found["range"] = f"{found['range_first']}-{found['range_first'] + 2}"
    return found


APPS = ("allowed", "range_first", "other")


@pytest.fixture(scope="module")
def hub(make_hub, ports):
    """The servers run the demo app on three ports beside the Jupyter server (with_app.py,
    as the demo does): apps of the server's own, on 127.0.0.1."""
    command = [sys.executable, str(REPO / "examples/with_app.py")]
    command += [a for name in APPS for a in ("--app-port", str(ports[name]))]
    command += ["--", str(BIN / "jupyterhub-singleuser")]
    config = f"c.Spawner.cmd = {command!r}"
    return make_hub([ports["allowed"], {"port": ports["idle"], "name": "dashboard"}, ports["range"]], config)


@pytest.fixture(scope="module")
def apps(ports, alice):
    """The pids of the server's apps, by name, once they listen."""
    wait_for(lambda: all(port_open(ports[name]) for name in APPS), 30, "the server's apps")
    return ports


def serve(tmp, port, address="127.0.0.1"):
    """``python -m http.server`` on ``address:port``, started by a process of the same system
    user that is not the server's (another server of the user's, a cron job)."""
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", address, str(port)], cwd=tmp)
    wait_for(lambda: port_open(port), 15, f"http.server on {port}")
    return proc


def panel(hub, token, method="GET", **kwargs) -> httpx.Response:
    return httpx.request(
        method, f"{hub.url}/user/alice/jhproxy-routes/ports", headers={"Authorization": f"token {token}"}, timeout=30, **kwargs
    )


def entries(response: httpx.Response) -> dict[int, dict]:
    assert response.status_code == 200, response.text
    return {entry["port"]: entry for entry in response.json()["ports"]}


def hub_ports(hub, token) -> dict:
    """The hub's settings of alice's ports, by port key."""
    response = hub.proxytoken(token, params={"format": "full"})
    assert response.status_code == 200, response.text
    return {str(entry["port"]): entry for entry in response.json()["ports"]}


def test_the_panel_lists_every_port_with_the_hubs_settings(hub, alice, apps, ports):
    def listed():
        found = entries(panel(hub, alice))
        return found if ports["allowed"] in found and ports["other"] in found else None

    found = wait_for(listed, 10, "the panel to list the apps")
    response = panel(hub, alice)
    assert response.headers.get("Cache-Control") == "no-store"  # it carries the port token
    answer = response.json()
    assert answer["hub"] is True and answer["hub_error"] is None and answer["user"] == "alice"
    assert answer["mode"] == "disabled" and answer["token"] is None, answer  # the default: no port token
    allowed = found[ports["allowed"]]
    assert allowed["allowed"] is True and allowed["listening"] is True and allowed["spec"] == str(ports["allowed"])
    assert allowed["url"] == f"{hub.url}/ports/alice/{ports['allowed']}/", allowed  # the browser's origin, not the hub's own
    assert allowed["process"].startswith("python") and "demo_app.py" in allowed["command"], allowed
    assert allowed["loopback_only"] is True and allowed["relayed"] is False  # on the hub's machine: no relay
    idle = found[ports["idle"]]
    assert idle["allowed"] is True and idle["listening"] is False and idle["name"] == "dashboard"
    in_range = found[ports["range_first"]]
    assert in_range["spec"] == ports["range"] and in_range["url"] == f"{hub.url}/ports/alice/{ports['range_first']}/"
    other = found[ports["other"]]
    assert other["allowed"] is False and other["url"] is None and other["listening"] is True
    assert answer["relay"] is False


def test_the_hub_learns_what_listens(hub, alice, apps, ports):
    def reported():
        settings = hub_ports(hub, alice)
        return settings if settings[str(ports["allowed"])]["listening"] else None

    settings = wait_for(reported, 10, "the hub to learn what listens")
    [entry] = settings[str(ports["allowed"])]["listening"]
    assert entry["port"] == ports["allowed"] and entry["process"].startswith("python"), entry
    assert settings[str(ports["idle"])]["listening"] == []  # reported: nothing there
    assert [e["port"] for e in settings[ports["range"]]["listening"]] == [ports["range_first"]]
    assert all(e["port"] != ports["other"] for s in settings.values() for e in s["listening"])  # not allowed: not told
    [running] = [e for e in panel(hub, alice).json()["ports"] if e["port"] == ports["range_first"]]
    os.kill(running["pid"], signal.SIGTERM)
    wait_for(lambda: hub_ports(hub, alice)[ports["range"]]["listening"] == [], 10, "the hub to learn the app stopped")


def test_visibility_changed_from_inside_the_server(hub, alice, apps, ports):
    url = f"/ports/alice/{ports['allowed']}/"

    def reaches_the_app() -> bool:  # the demo app answers, saying whose server it runs in
        response = hub.get(url)
        return response.status_code == 200 and response.json().get("server_of") == "alice"

    assert not reaches_the_app()  # a stranger, while the port is the server's
    changed = panel(hub, alice, "POST", json={"ports": {str(ports["allowed"]): "public"}})
    assert entries(changed)[ports["allowed"]]["access"] == "public", changed.text
    wait_for(reaches_the_app, 10, "the route to be public")
    refused = panel(hub, alice, "POST", json={"ports": {str(ports["allowed"]): "everyone-please"}})
    assert refused.status_code == 400 and "access must be one of" in refused.json()["message"], refused.text
    for body in (b"public", b"[1]", b"{"):
        response = panel(hub, alice, "POST", content=body)
        assert response.status_code == 400 and "Traceback" not in response.text, response.text
    back = panel(hub, alice, "POST", json={"ports": {str(ports["allowed"]): "server"}})
    assert entries(back)[ports["allowed"]]["access"] == "server"


def test_a_new_token_from_inside_the_server(hub, alice, apps):
    before = panel(hub, alice).json()["token"]
    after = panel(hub, alice, "POST", json={"mode": "random"}).json()
    assert after["token"] and after["token"] != before
    assert hub.proxytoken(alice).json() == after["token"]


def test_no_relay_on_the_hubs_machine(hub, alice, apps, ports):
    """Here the routes reach 127.0.0.1: a relay would only open the app to the network."""
    assert hub_ports(hub, alice)  # the server runs
    for address in own_addresses():
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family) as probe:
            probe.settimeout(2)
            assert probe.connect_ex((address, ports["allowed"])) != 0, f"something listens on {address}:{ports['allowed']}"


def report(hub, token, body, server=""):
    return hub.api("POST", f"/jhproxy-routes/listening/{server}", token=token, json=body)


def test_reports_only_from_the_users_own_credential(hub, alice, apps, ports):
    forged = {"ports": [{"port": ports["idle"], "process": "<script>alert(1)</script>"}]}
    assert report(hub, hub.user_token("mallory"), forged).status_code == 409  # mallory's own, not running
    assert report(hub, ADMIN_TOKEN, forged).status_code == 403  # a service is no user
    read_only = hub.api("POST", "/users/alice/tokens", json={"scopes": ["read:users:name!user=alice"]}).json()["token"]
    assert report(hub, read_only, forged).status_code == 403
    assert report(hub, alice, forged, server="nosuch").status_code == 409
    for body in (
        {},
        {"ports": "all"},
        {"ports": [{"port": 0}]},
        {"ports": [{"port": "80"}]},
        {"ports": [{"port": 80, "process": 1}]},
        [],
    ):
        response = report(hub, alice, body)
        assert response.status_code == 400 and "Traceback" not in response.text, (body, response.text)
    huge = {"ports": [{"port": ports["idle"], "process": "x" * (1 << 20)}]}  # parsed, it would block the hub
    response = report(hub, alice, huge)
    assert response.status_code == 413 and "Traceback" not in response.text, response.text
    assert hub_ports(hub, alice)[str(ports["idle"])]["listening"] == []  # none of them counted


def test_the_hubs_pages_show_what_listens(hub, alice, apps, ports, browser):
    """The home page and the ports page, in Chromium: "listening: python3 ..." beside the
    allowed port with an app, "nothing listening" beside the one without."""
    from tests.rig import browser_login, shoot

    wait_for(lambda: hub_ports(hub, alice)[str(ports["allowed"])]["listening"], 10, "the report")
    context, page = browser_login(browser, hub.url, "alice")
    for path, cell in (("/hub/home", ".jhpr-home-listening"), ("/hub/proxytoken/", ".jhpr-listening")):
        page.goto(path)
        allowed = page.locator(f"tr[data-port='{ports['allowed']}'] {cell}")
        allowed.wait_for()
        text = allowed.inner_text()
        assert text.startswith("listening: python") and "127.0.0.1 only: not reachable" not in text, text
        assert page.locator(f"tr[data-port='{ports['idle']}'] {cell}").inner_text() == "nothing listening"
    shoot(page, "ports-page-listening")
    context.close()


def test_on_a_shared_host_only_the_servers_own_processes(hub, alice, apps, module_tmp):
    """The same system user's listener started outside the server (another of the user's
    servers, a cron job) is not this server's: not listed, not reported."""
    stranger_port = free_port()
    stranger = serve(module_tmp, stranger_port)
    try:
        assert panel(hub, alice).json()["ports"]  # the server's own are listed...
        time.sleep(2.5)  # two of the watch's rounds
        assert stranger_port not in entries(panel(hub, alice))  # ...the stranger's is not
    finally:
        stranger.terminate()
        stranger.wait(10)
