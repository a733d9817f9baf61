"""Apps that listen on 127.0.0.1 in a container, reached through their routes: the in-server
part (``jhproxy_routes.singleuser``, installed in the image as an admin installs it; here the
checkout is mounted) relays from the container's own address to the loopback listener.

Real DockerSpawner containers through podman. What must hold, from the attacker's side too:
only allowed ports are relayed; never the Jupyter server's own port or a kernel's, even inside
an allowed range; with the admin's switch off, nothing is, and the route says what is wrong.
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from tests.rig import REPO, wait_for
from tests.test_docker import container, docker_hub

ALLOWED, NOT_ALLOWED = 5000, 5001
WIDE_RANGE = "10000-65000"  # covers a kernel's ports (ephemeral)
IN_SERVER = f"""
c.DockerSpawner.volumes.update({{
    {str(REPO)!r}: {{"bind": "/opt/jhproxy-routes", "mode": "ro"}},
    {str(REPO / "jupyter-config/jupyter_server_config.d/jhproxy_routes.json")!r}: {{
        "bind": "/opt/venv/etc/jupyter/jupyter_server_config.d/jhproxy_routes.json", "mode": "ro"}},
}})
c.DockerSpawner.environment = {{"PYTHONPATH": "/opt/jhproxy-routes"}}
"""


def relay_hub(make_hub, engine, extra=""):
    return docker_hub(
        make_hub,
        engine,
        ports=[ALLOWED, WIDE_RANGE],
        app_ports=[ALLOWED, NOT_ALLOWED],
        app_ip="127.0.0.1",
        extra=IN_SERVER + extra,
    )


@pytest.fixture(scope="module")
def hub(make_hub, engine):
    return relay_hub(make_hub, engine)


def start(hub, engine, user) -> tuple[str, str]:
    """Spawn ``user``'s container, make its allowed port public: (API token, container IP)."""
    token = hub.user_token(user)
    hub.spawn(user)
    changed = hub.proxytoken(token, "POST", json={"ports": {str(ALLOWED): "public"}})
    assert changed.status_code == 200, changed.text
    return token, container(engine, hub, user)["NetworkSettings"]["Networks"]["podman"]["IPAddress"]


def netns_listeners(engine, hub, user) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket in the container's network namespace,
    read from the host through its first process (/proc/<pid>/net/tcp{,6})."""
    from jhproxy_routes import procnet

    pid = container(engine, hub, user)["State"]["Pid"]
    tables = (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6")
    return {(str(s.local[0]), s.local[1]) for s in procnet.listening(tables)}


def test_a_loopback_app_is_reached_through_its_route(hub, engine):
    token, ip = start(hub, engine, "alice")
    assert ("127.0.0.1", ALLOWED) in netns_listeners(engine, hub, "alice")  # the app: loopback only

    def reached():
        response = hub.get(f"/ports/alice/{ALLOWED}/hello")
        return response if response.status_code == 200 else None

    response = wait_for(reached, 15, "the loopback app through its route", hub.log_path)
    assert response.json()["server_of"] == "alice"
    assert (ip, ALLOWED) in netns_listeners(engine, hub, "alice")  # the relay, on the container's own address
    # the panel says so
    panel = httpx.get(f"{hub.url}/user/alice/jhproxy-routes/ports", headers={"Authorization": f"token {token}"}, timeout=30)
    entry = {e["port"]: e for e in panel.json()["ports"]}[ALLOWED]
    assert entry["relayed"] is True and entry["loopback_only"] is True and panel.json()["relay"] is True, entry


def test_only_allowed_ports_are_relayed_never_a_kernels_or_the_servers(hub, engine):
    token, ip = start(hub, engine, "bob")
    kernel = httpx.post(f"{hub.url}/user/bob/api/kernels", headers={"Authorization": f"token {token}"}, json={}, timeout=60)
    assert kernel.status_code == 201, kernel.text
    wait_for(lambda: hub.get("/ports/bob/5000/").status_code == 200, 15, "the relay of the allowed port", hub.log_path)

    def kernel_listening():
        loopback = {port for address, port in netns_listeners(engine, hub, "bob") if ipaddress.ip_address(address).is_loopback}
        return loopback - {ALLOWED, NOT_ALLOWED}

    kernel_ports = wait_for(kernel_listening, 30, "the kernel's ports")
    # inside the allowed range: its five ZMQ channels, and one more that ipykernel opens
    assert len(kernel_ports) >= 5 and all(10000 <= p <= 65000 for p in kernel_ports), kernel_ports
    for _ in range(3):  # three of the watcher's rounds
        wait_for(lambda: hub.get("/ports/bob/5000/").status_code == 200, 5, "the route")
    own = {port for address, port in netns_listeners(engine, hub, "bob") if address == ip}
    assert own == {ALLOWED}, own  # the relay of 5000 alone: not 5001 (not allowed), no port of the kernel's
    for port in (NOT_ALLOWED, *sorted(kernel_ports)[:2]):
        response = hub.get(f"/ports/bob/{port}/", headers={"X-Proxy-Token": "x"})
        assert response.status_code in (403, 404, 502), response.text
    panel = httpx.get(f"{hub.url}/user/bob/jhproxy-routes/ports", headers={"Authorization": f"token {token}"}, timeout=30)
    assert not kernel_ports & {e["port"] for e in panel.json()["ports"]}
    assert not [e for e in panel.json()["ports"] if "ipykernel" in e["command"] or "jupyterhub-singleuser" in e["command"]]


def test_the_relay_follows_the_app(hub, engine):
    """The app stops: the relay lets the port go, so that an app on all interfaces can take it."""
    token, ip = start(hub, engine, "carol")
    wait_for(lambda: hub.get("/ports/carol/5000/").status_code == 200, 15, "the relay", hub.log_path)
    panel = httpx.get(f"{hub.url}/user/carol/jhproxy-routes/ports", headers={"Authorization": f"token {token}"}, timeout=30)
    app_pid = {e["port"]: e for e in panel.json()["ports"]}[ALLOWED]["pid"]  # as the container sees it
    stop = engine["client"].exec_create(container(engine, hub, "carol")["Id"], ["/bin/sh", "-c", f"kill {app_pid}"])
    assert engine["client"].exec_start(stop["Id"]) == b""
    wait_for(lambda: (ip, ALLOWED) not in netns_listeners(engine, hub, "carol"), 10, "the relay to stop")
    assert hub.get("/ports/carol/5000/").status_code == 502


def test_switched_off_nothing_is_relayed(make_hub, engine):
    hub = relay_hub(make_hub, engine, extra="c.PortRoutes.loopback_relay = False\n")
    token, ip = start(hub, engine, "dave")
    wait_for(lambda: hub_listening(hub, token), 15, "the in-server part's report", hub.log_path)
    assert (ip, ALLOWED) not in netns_listeners(engine, hub, "dave")
    [entry] = hub_listening(hub, token)
    assert entry["loopback_only"] is True and entry["relayed"] is False and entry["reachable"] is False
    # the page of the refused connection says what the in-server part found, and the fix

    def explained():
        response = hub.get("/ports/dave/5000/", headers={"Accept": "text/html"})
        return response if "listens on 127.0.0.1 only" in response.text else None

    response = wait_for(explained, 10, "the route's page to say what was found", hub.log_path)
    assert response.status_code == 502 and "--host 0.0.0.0" in response.text, response.text
    assert "this hub does not relay to such apps" in response.text
    # what a report says is the user's to choose, and only ever text on that page
    forged = {"ports": [{"port": ALLOWED, "process": "<script>alert(1)</script>", "loopback_only": True}]}
    assert hub.api("POST", "/jhproxy-routes/listening/", token=token, json=forged).status_code == 204

    def escaped():
        response = hub.get("/ports/dave/5000/", headers={"Accept": "text/html"})
        return response if "&lt;script&gt;alert(1)&lt;/script&gt; listens" in response.text else None

    response = wait_for(escaped, 10, "the forged name on the page", hub.log_path)
    assert "<script>alert" not in response.text


def hub_listening(hub, token):
    settings = hub.proxytoken(token, params={"format": "full"}).json()
    return {str(p["port"]): p for p in settings["ports"]}[str(ALLOWED)]["listening"]
