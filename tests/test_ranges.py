"""Port ranges in the allow-list: one proxy route per server for the whole range, the port
read from the path by the sidecar, a clear 404 for any other port, and never the Jupyter
server's own port. A real hub, CHP, sidecar, single-user server and apps on real ports."""

import httpx
import pytest

from tests.rig import ADMIN_TOKEN, App, free_ports


@pytest.fixture(scope="module")
def block(module_tmp):
    """Ports base..base+4: apps on base and base+2, the Jupyter server on base+1, base+3 idle."""
    base = free_ports(5)
    apps = [App(module_tmp, base), App(module_tmp, base + 2)]
    yield base
    for app in apps:
        app.stop()


@pytest.fixture(scope="module")
def hub(make_hub, make_app, block):
    single = make_app()
    ports = [{"port": single.port, "access": "public", "scope_cookies": False}, {"port": f"{block}-{block + 3}", "name": "apps"}]
    hub = make_hub(ports, f"c.Spawner.port = {block + 1}")
    hub.single = single
    return hub


@pytest.fixture(scope="module")
def token(hub):
    api_token = hub.user_token("ranger")
    hub.spawn("ranger")
    hub.api_token = api_token
    return hub.proxytoken(api_token, "POST", content="random").json()


def test_a_range_is_one_route(hub, block, token):
    routes = hub.port_routes()
    assert set(routes) == {f"/ports/ranger/{hub.single.port}", "/ports/ranger"}
    assert routes["/ports/ranger"]["target"] == hub.sidecar_url
    assert routes["/ports/ranger"]["port"] == f"{block}-{block + 3}"
    listed = hub.get("/hub/api/jhproxy-routes/routes", headers={"Authorization": f"token {ADMIN_TOKEN}"}).json()
    [row] = [r for r in listed if r["path"] == "/ports/ranger/"]
    assert (row["port"], row["via"], row["target"], row["name"]) == (
        f"{block}-{block + 3}",
        "sidecar",
        "http://127.0.0.1:{port}",
        "apps",
    )


def test_the_port_comes_from_the_path_and_the_check_from_the_range(hub, block, token):
    first = f"{hub.url}/ports/ranger/{block}"
    assert httpx.get(first + "/x").status_code == 403  # no token
    assert httpx.get(first + "/x", headers={"X-Proxy-Token": "wrong"}).status_code == 403
    answer = httpx.get(first + "/x?a=1", headers={"X-Proxy-Token": token})
    assert answer.status_code == 200 and answer.json()["path"] == f"/ports/ranger/{block}/x"
    third = httpx.get(f"{hub.url}/ports/ranger/{block + 2}/y", headers={"X-Proxy-Token": token})
    assert third.status_code == 200 and third.json()["path"] == f"/ports/ranger/{block + 2}/y"
    idle = httpx.get(f"{hub.url}/ports/ranger/{block + 3}/", headers={"X-Proxy-Token": token})
    assert (
        idle.status_code == 502 and f"Nothing is listening on port {block + 3} of ranger's server yet" in idle.json()["message"]
    )
    # the single port keeps its own direct route
    assert httpx.get(f"{hub.url}/ports/ranger/{hub.single.port}/z").status_code == 200


@pytest.mark.parametrize("segment", ["outside", "07", "abc", "own"])
def test_other_ports_get_a_clear_404(hub, block, token, segment):
    """What someone probing for other ports would try: just past the range, a leading zero,
    a name, and the Jupyter server's own port (inside the range)."""
    port = {"outside": str(block + 4), "07": f"0{block}", "abc": "abc", "own": str(block + 1)}[segment]
    response = httpx.get(f"{hub.url}/ports/ranger/{port}/api/status", headers={"X-Proxy-Token": token})
    assert response.status_code == 404, response.text
    message = response.json()["message"]
    if segment == "own":
        assert f"Port {block + 1} of this server is not routed: it is the Jupyter server's own" in message
    else:
        assert f"is not in the allow-list of this server (allowed: {hub.single.port}, {block}-{block + 3})" in message


def test_access_of_a_range_is_set_like_a_port(hub, block, token):
    key = f"{block}-{block + 3}"
    settings = hub.proxytoken(hub.api_token, "POST", json={"ports": {key: "public"}}).json()
    [entry] = [p for p in settings["ports"] if p["port"] == key]
    assert entry["access"] == "public" and entry["url"].endswith("/ports/ranger/{port}/")
    assert httpx.get(f"{hub.url}/ports/ranger/{block}/x").status_code == 200  # no token now
    assert set(hub.port_routes()) == {f"/ports/ranger/{hub.single.port}", "/ports/ranger"}  # still one route
    assert httpx.get(f"{hub.url}/ports/ranger/{block + 1}/api/status").status_code == 404  # still not the server
    hub.proxytoken(hub.api_token, "POST", json={"ports": {key: "server"}})
    assert httpx.get(f"{hub.url}/ports/ranger/{block}/x").status_code == 403
    response = hub.proxytoken(hub.api_token, "POST", json={"ports": {str(block): "public"}})
    assert response.status_code == 400 and f"{block}-{block + 3}" in response.json()["message"]


def test_routes_go_with_the_server(hub, token):
    hub.stop_server("ranger")
    assert hub.port_routes() == {}


def test_on_the_hubs_machine_the_hubs_own_ports_are_never_routed(make_hub, make_app):
    """A range (or a port) over the sidecar's, the hub's or the proxy's ports, on a shared
    host: what a user there would try to reach the hub's insides (or loop the sidecar)."""
    app = make_app()
    hub = make_hub([app.port], start=False)
    config = hub.dir / "jupyterhub_config.py"
    reserved = [hub.sidecar_port, hub.hub_port, hub.api_port]
    ports = [app.port, *(f"{p}-{p + 1}" for p in reserved[:1]), *reserved[1:]]
    config.write_text(config.read_text() + f"c.PortRoutes.ports = {ports!r}\n")
    hub.start()
    token_api = hub.user_token("shared")
    hub.spawn("shared")
    token = hub.proxytoken(token_api, "POST", content="random").json()
    assert set(hub.port_routes()) == {f"/ports/shared/{app.port}", "/ports/shared"}
    response = httpx.get(f"{hub.url}/ports/shared/{hub.sidecar_port}/_jhproxy-routes/health", headers={"X-Proxy-Token": token})
    assert response.status_code == 404 and "is not routed" in response.json()["message"], response.text
    assert f"port {hub.hub_port} of shared/ is the hub's port: no route" in hub.log()
    assert f"port {hub.api_port} of shared/ is the proxy's API: no route" in hub.log()
    hub.stop_server("shared")
