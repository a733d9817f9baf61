"""Allowed ports become CHP routes for the life of each server (real hub, CHP, servers, apps)."""

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.rig import free_port, wait_for


@pytest.fixture(scope="module")
def apps(make_app):
    return make_app(), make_app()


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    protected, public = apps
    return make_hub([protected.port, {"port": public.port, "access": "public", "scope_cookies": False}])


def test_routes_follow_the_server(hub, apps):
    protected, public = apps
    token = hub.user_token("alice")
    hub.spawn("alice")
    routes = hub.port_routes()
    assert set(routes) == {f"/ports/alice/{protected.port}", f"/ports/alice/{public.port}"}
    # the public port goes straight to the app, the other through the sidecar
    assert routes[f"/ports/alice/{public.port}"]["target"] == f"http://127.0.0.1:{public.port}"
    assert routes[f"/ports/alice/{protected.port}"]["target"] == hub.sidecar_url
    # our tag, never JupyterHub's
    assert all("jupyterhub" not in data and data["jhproxy_routes"] is True for data in routes.values())

    response = hub.get(f"/ports/alice/{public.port}/some/path?x=1")
    assert response.status_code == 200
    assert response.json()["path"] == f"/ports/alice/{public.port}/some/path"

    assert hub.proxytoken(token, "POST", content="allow_all").json() == ""
    response = hub.get(f"/ports/alice/{protected.port}/api")
    assert response.status_code == 200, response.text
    assert response.json()["path"] == f"/ports/alice/{protected.port}/api"

    hub.stop_server("alice")
    assert hub.port_routes() == {}
    # CHP's default route is the hub (which redirects to its own 404): the app is out of reach
    seen = len(public.received())
    assert hub.get(f"/ports/alice/{public.port}/some/path").status_code in (302, 404)
    assert len(public.received()) == seen


def test_jupyterhub_check_routes_leaves_ours_alone(hub):
    hub.user_token("bob")
    hub.spawn("bob")
    before = hub.port_routes()
    assert len(before) == 2
    # POST /hub/api/proxy makes JupyterHub run check_routes, which deletes stale
    # jupyterhub-tagged routes: ours must survive it
    assert hub.api("POST", "/proxy").status_code == 200
    assert hub.port_routes().keys() == before.keys()
    assert "Deleting stale route /ports/" not in hub.log()
    hub.stop_server("bob")


def test_named_servers_get_distinct_routes(hub, apps):
    protected, public = apps
    token = hub.user_token("carol")
    hub.spawn("carol", "one")
    hub.spawn("carol", "two")
    routes = hub.port_routes()
    expected = {f"/ports/carol/{name}/{port}" for name in ("one", "two") for port in (protected.port, public.port)}
    assert expected <= set(routes)
    assert routes[f"/ports/carol/one/{public.port}"]["servername"] == "one"
    assert routes[f"/ports/carol/two/{public.port}"]["servername"] == "two"
    # each named server has its own mode
    hub.proxytoken(token, "POST", server="one", content="allow_all")
    assert hub.get(f"/ports/carol/one/{protected.port}/").status_code == 200
    assert hub.get(f"/ports/carol/two/{protected.port}/").status_code == 403
    hub.stop_server("carol", "one")
    routes = hub.port_routes()
    assert not any(path.startswith("/ports/carol/one/") for path in routes)
    assert f"/ports/carol/two/{public.port}" in routes
    hub.stop_server("carol", "two")


def test_routes_come_back_after_chp_restart(hub, apps):
    protected, public = apps
    hub.user_token("dave")
    hub.spawn("dave")
    [chp_pid] = hub.child_pids("configurable-http-proxy")
    os.kill(chp_pid, signal.SIGKILL)
    # JupyterHub restarts its CHP within check_running_interval (5 s); the new one is empty
    wait_for(lambda: hub.child_pids("configurable-http-proxy") not in ([], [chp_pid]), 30, "a new CHP")
    wait_for(lambda: len(hub.port_routes()) == 2 and "/" in hub.chp_routes(), 30, "routes in the new CHP", hub.log_path)
    assert hub.get(f"/ports/dave/{public.port}/").status_code == 200
    hub.stop_server("dave")


def test_reconcile_adds_missing_and_removes_stale(hub, apps):
    protected, public = apps
    hub.user_token("erin")
    hub.spawn("erin")
    headers = {"Authorization": f"token {hub.chp_token}"}
    # someone deletes one of ours, and a stale one of ours is left from an old server
    httpx.delete(f"{hub.chp_api}/api/routes/ports/erin/{public.port}", headers=headers).raise_for_status()
    httpx.post(
        f"{hub.chp_api}/api/routes/ports/ghost/5000",
        headers=headers,
        json={"target": "http://127.0.0.1:9", "jhproxy_routes": True, "username": "ghost"},
    ).raise_for_status()
    # a route that is not ours is never touched
    httpx.post(f"{hub.chp_api}/api/routes/other", headers=headers, json={"target": "http://127.0.0.1:9"}).raise_for_status()
    wait_for(
        lambda: f"/ports/erin/{public.port}" in hub.port_routes() and "/ports/ghost/5000" not in hub.port_routes(),
        20,
        "the periodic reconciliation",
        hub.log_path,
    )
    assert "/other" in hub.chp_routes()
    hub.stop_server("erin")


def test_hub_restart_reconciles(make_hub, apps):
    """Servers keep running across a hub restart; the new CHP gets their port routes."""
    protected, public = apps
    hub = make_hub(
        [protected.port, {"port": public.port, "access": "public", "scope_cookies": False}],
        "c.JupyterHub.cleanup_servers = False",
    )
    hub.user_token("frank")
    hub.spawn("frank")
    hub.stop(leave_servers=True)
    hub.start()
    wait_for(lambda: f"/ports/frank/{public.port}" in hub.port_routes(), 30, "routes after restart", hub.log_path)
    assert hub.get(f"/ports/frank/{public.port}/x").status_code == 200
    hub.stop_server("frank")
    assert not any(p.startswith("/ports/frank/") for p in hub.port_routes())


def test_servers_on_the_hub_machine_get_no_routes_unless_allowed(make_hub, apps):
    """Local servers share the machine's ports: bob's route to 5000 would reach alice's app."""
    protected, public = apps
    hub = make_hub([protected.port], "c.PortRoutes.allow_shared_host = False")
    hub.user_token("local")
    hub.spawn("local")
    assert hub.port_routes() == {}
    assert "no port routes for local/: its address 127.0.0.1 is the hub's own machine" in hub.log()
    assert "c.PortRoutes.allow_shared_host = True" in hub.log()
    hub.stop_server("local")


def test_the_jupyter_servers_own_port_never_gets_a_route(make_hub, apps):
    """An admin lists the port the single-user server itself listens on: its route would give
    the port's token (or, public, anyone) the whole server. What an attacker hopes for."""
    protected, _ = apps
    server_port = free_port()
    hub = make_hub([protected.port, {"port": server_port, "access": "public"}], f"c.Spawner.port = {server_port}")
    hub.user_token("own")
    hub.spawn("own")
    assert set(hub.port_routes()) == {f"/ports/own/{protected.port}"}
    assert f"port {server_port} of own/ is its Jupyter server's own port: no route" in hub.log()
    response = hub.get(f"/ports/own/{server_port}/api/contents")  # CHP's default: the hub
    assert response.status_code == 302 and response.headers["Location"].startswith("/hub/"), response.text[:300]
    hub.stop_server("own")


def test_an_unreachable_or_silent_sidecar_never_blocks_a_spawn(make_hub, apps):
    """The sidecar's address accepts connections and never answers (a wedged process)."""
    import socket

    protected, public = apps
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))  # refusing while the hub starts (it checks external services)
    try:
        hub = make_hub(
            [protected.port, {"port": public.port, "access": "public", "scope_cookies": False}],
            f"""
            c.PortRoutes.sidecar_managed = False
            c.PortRoutes.sidecar_api_token = "wedged-sidecar-secret-0123456789"
            # registered without its URL: the hub's start-up check of external services
            # would wait half a minute for this dead address
            c.JupyterHub.services.append({{"name": "jhproxy-routes", "api_token": "wedged-sidecar-secret-0123456789"}})
            c.PortRoutes.sidecar_url = "http://127.0.0.1:{silent.getsockname()[1]}"
            c.PortRoutes.api_timeout = 1
            c.PortRoutes.api_retry_timeout = 3
            c.PortRoutes.reconcile_interval = 0
            """,
        )
        silent.listen(100)  # now wedged: connections are accepted, never answered
        hub.user_token("wedged")
        hub.spawn("wedged")  # completes: the port routes are given up on, not waited for
        log = hub.log()
        assert "port routes of wedged/ not added yet, left to the next reconciliation: " in log
        assert f"sidecar route /ports/wedged/{protected.port} failed (ReadTimeout" in log
        assert "gave up after 3s (ReadTimeout" in log
        # the public port needs no sidecar and works
        assert hub.get(f"/ports/wedged/{public.port}/").status_code == 200
        hub.stop_server("wedged")
    finally:
        silent.close()


def test_a_server_that_stopped_while_the_hub_was_down_gets_no_route(make_hub, apps):
    """The hub is down; one user's server dies meanwhile. After the restart the other
    server's ports are back, and the dead one's stay gone, also after reconciliations."""
    _, public = apps
    hub = make_hub([{"port": public.port, "access": "public", "scope_cookies": False}], "c.JupyterHub.cleanup_servers = False")
    for user in ("gina", "hank"):
        hub.user_token(user)
        hub.spawn(user)
    servers = {server_user(pid): pid for pid in hub.child_pids("jupyterhub-singleuser")}
    hub.stop(leave_servers=True)
    os.kill(servers["hank"], signal.SIGKILL)
    hub.start()
    wait_for(lambda: f"/ports/gina/{public.port}" in hub.port_routes(), 30, "gina's route after restart", hub.log_path)
    time.sleep(5)  # two reconciliations (reconcile_interval = 2)
    assert not any(p.startswith("/ports/hank/") for p in hub.port_routes())
    assert hub.get(f"/ports/hank/{public.port}/x").status_code != 200
    assert hub.get(f"/ports/gina/{public.port}/x").status_code == 200
    hub.stop_server("gina")  # a child of the first hub process: the fixture would not stop it


def server_user(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"JUPYTERHUB_USER="))
