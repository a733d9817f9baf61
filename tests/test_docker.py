"""DockerSpawner for real: the unmodified dockerspawner.DockerSpawner (and the seed's
TokenizedDockerSpawner) against a real Docker-API engine (podman), in both network modes.

Traffic goes to 127.0.0.1 and to the containers these tests start (podman's bridge).
"""

import secrets

import httpx
import pytest

from tests.rig import REPO, wait_for

APP_PORTS = (5000, 5001)


def docker_config(engine, prefix, internal_ip=True, spawner="docker", ports=APP_PORTS, app_ip="0.0.0.0"):
    mode = (
        'c.DockerSpawner.network_name = "podman"\nc.DockerSpawner.use_internal_ip = True'
        if internal_ip
        else 'c.DockerSpawner.use_internal_ip = False\nc.DockerSpawner.host_ip = "127.0.0.1"'
    )
    app_args = [a for p in ports for a in ("--app-port", str(p))]
    cmd = [
        "/opt/venv/bin/python",
        "/opt/examples/with_app.py",
        "--app-ip",
        app_ip,
        *app_args,
        "--",
        "/opt/venv/bin/jupyterhub-singleuser",
        "--allow-root",
    ]
    return f"""
c.JupyterHub.spawner_class = {spawner!r}
c.DockerSpawner.image = {engine["JHPROXY_ROUTES_IMAGE"]!r}
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.remove = True
c.DockerSpawner.prefix = {prefix!r}
c.DockerSpawner.cmd = {cmd!r}
c.DockerSpawner.args = []
c.DockerSpawner.volumes = {{{str(REPO / "examples")!r}: {{"bind": "/opt/examples", "mode": "ro"}}}}
c.Spawner.poll_interval = 1
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_connect_ip = "10.88.0.1"
c.PortRoutes.allow_shared_host = False  # containers have addresses of their own
{mode}
"""


def docker_hub(make_hub, engine, internal_ip=True, **kwargs):
    prefix = "jhpt" + secrets.token_hex(3)
    engine["prefixes"].append(prefix)
    ports = kwargs.pop("ports", list(APP_PORTS))
    extra = kwargs.pop("extra", "")
    if "app_ports" in kwargs:  # the demo apps' ports, where they differ from the allowed ones
        kwargs["ports"] = kwargs.pop("app_ports")
    config = docker_config(engine, prefix, internal_ip, **kwargs) + extra
    hub = make_hub(ports, config, env={"DOCKER_HOST": engine["DOCKER_HOST"]})
    hub.prefix = prefix
    return hub


def container(engine, hub, user, server=""):
    name = f"{hub.prefix}-{user}" + (f"--{server}" if server else "")
    return engine["client"].inspect_container(name)


def port_url(hub, user, port):
    return f"/ports/{user}/{port}/"


def open_port(hub, user):
    """Spawn ``user``'s server and give it a random port token: returns the token."""
    api_token = hub.user_token(user)
    hub.spawn(user)
    return hub.proxytoken(api_token, "POST", content="random").json()


@pytest.fixture(scope="module")
def ip_hub(make_hub, engine):
    return docker_hub(make_hub, engine, internal_ip=True)


def test_container_ip_mode_targets_the_container(ip_hub, engine):
    token = open_port(ip_hub, "alice")
    ip = container(engine, ip_hub, "alice")["NetworkSettings"]["Networks"]["podman"]["IPAddress"]
    assert ip.startswith("10.88.")
    routes = ip_hub.port_routes()
    assert routes["/ports/alice/5001"]["target"] == ip_hub.sidecar_url
    response = ip_hub.get(port_url(ip_hub, "alice", 5000) + "hello", headers={"X-Proxy-Token": token})
    assert response.status_code == 200, response.text
    assert response.json()["server_of"] == "alice"
    # the sidecar's table points at the container, not at a published port
    table = httpx.get(
        f"{ip_hub.sidecar_url}/_jhproxy-routes/api/routes",
        headers={"Authorization": f"token {sidecar_token(ip_hub)}"},
    ).json()
    assert table["/ports/alice/5000"]["target"] == f"http://{ip}:5000"
    # no port was published to the host
    bindings = container(engine, ip_hub, "alice")["HostConfig"].get("PortBindings") or {}
    assert not any(bindings.values()) and not {"5000/tcp", "5001/tcp"} & set(bindings)


def test_a_port_range_reaches_any_port_of_the_container_but_the_servers_own(make_hub, engine):
    """One route for 5001-8888 (which covers the Jupyter server's 8888 in the container)."""
    hub = docker_hub(make_hub, engine, internal_ip=True, ports=[5000, "5001-8888"])
    token = open_port(hub, "rita")
    assert set(hub.port_routes()) == {"/ports/rita/5000", "/ports/rita"}
    response = hub.get("/ports/rita/5001/hello", headers={"X-Proxy-Token": token})
    assert response.status_code == 200 and response.json()["server_of"] == "rita", response.text
    assert hub.get("/ports/rita/5001/hello").status_code == 403
    assert hub.get("/ports/rita/5002/", headers={"X-Proxy-Token": token}).status_code == 502  # nothing listens
    own = hub.get("/ports/rita/8888/api/status", headers={"X-Proxy-Token": token})
    assert own.status_code == 404 and "Port 8888 of this server is not routed" in own.json()["message"], own.text
    hub.stop_server("rita")
    assert hub.port_routes() == {}


def sidecar_token(hub) -> str:
    [pid] = hub.child_pids("jhproxy_routes.sidecar")
    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return next(e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"JHPROXY_ROUTES_SIDECAR_TOKEN="))


def test_isolation_between_users_on_one_port(ip_hub, engine):
    alice = open_port(ip_hub, "alice2")
    bob = open_port(ip_hub, "bob")
    carol = open_port(ip_hub, "carol")
    for user, token in (("alice2", alice), ("bob", bob)):
        response = ip_hub.get(port_url(ip_hub, user, 5000), headers={"X-Proxy-Token": token})
        assert response.status_code == 200 and response.json()["server_of"] == user
    # each token opens its owner's port only; a third user's token opens neither
    for user, token in (("alice2", bob), ("bob", alice), ("alice2", carol), ("bob", carol)):
        assert ip_hub.get(port_url(ip_hub, user, 5000), headers={"X-Proxy-Token": token}).status_code == 403
    for user in ("alice2", "bob", "carol"):
        ip_hub.stop_server(user)


def test_removed_container_leaves_no_route_and_recreation_updates_it(ip_hub, engine):
    token = open_port(ip_hub, "dora")
    first = container(engine, ip_hub, "dora")
    engine["client"].remove_container(first["Id"], force=True)
    # JupyterHub's poll notices; its stop removes the port routes with the server
    wait_for(lambda: not any(p.startswith("/ports/dora/") for p in ip_hub.port_routes()), 60, "routes gone", ip_hub.log_path)
    # a new container (maybe a new IP): routes follow
    ip_hub.spawn("dora")
    second = container(engine, ip_hub, "dora")
    assert second["Id"] != first["Id"]
    ip = second["NetworkSettings"]["Networks"]["podman"]["IPAddress"]
    response = ip_hub.get(port_url(ip_hub, "dora", 5000), headers={"X-Proxy-Token": token})
    assert response.status_code == 200 and response.json()["server_of"] == "dora"
    assert ip_hub.port_routes()["/ports/dora/5000"]["target"] == ip_hub.sidecar_url
    ip_hub.stop_server("dora")
    assert not any(p.startswith("/ports/dora/") for p in ip_hub.port_routes())
    assert not engine["client"].containers(all=True, filters={"id": second["Id"]})
    assert ip


def test_host_binding_mode_publishes_and_finds_the_ports(make_hub, engine):
    # remove = False: an auto-removed container cannot be restarted in place
    hub = docker_hub(make_hub, engine, internal_ip=False, extra="c.DockerSpawner.remove = False\n")
    token = open_port(hub, "erin")
    info = container(engine, hub, "erin")
    published = info["NetworkSettings"]["Ports"]
    host_ports = {port: int(published[f"{port}/tcp"][0]["HostPort"]) for port in APP_PORTS}
    assert all(published[f"{port}/tcp"][0]["HostIp"] in ("127.0.0.1", "") for port in APP_PORTS)
    assert set(host_ports.values()).isdisjoint(APP_PORTS)  # random host ports
    for port in APP_PORTS:
        response = hub.get(port_url(hub, "erin", port) + "x", headers={"X-Proxy-Token": token})
        assert response.status_code == 200 and response.json()["server_of"] == "erin"
    table = httpx.get(
        f"{hub.sidecar_url}/_jhproxy-routes/api/routes", headers={"Authorization": f"token {sidecar_token(hub)}"}
    ).json()
    assert table["/ports/erin/5000"]["target"] == f"http://127.0.0.1:{host_ports[5000]}"

    # stopped behind JupyterHub's back: its poll sees it (routes go with the server); when the
    # user starts again, the same container comes back, maybe on new host ports: routes follow.
    # (A plain restart can be quicker than the poll, which then never sees the stop.)
    engine["client"].stop(info["Id"], timeout=2)
    wait_for(lambda: "" not in hub.api("GET", "/users/erin").json()["servers"], 60, "JupyterHub to see the stop")
    assert not any(p.startswith("/ports/erin/") for p in hub.port_routes())
    hub.spawn("erin")
    assert container(engine, hub, "erin")["Id"] == info["Id"]
    new_port = int(container(engine, hub, "erin")["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"])

    def follows():
        table = httpx.get(
            f"{hub.sidecar_url}/_jhproxy-routes/api/routes", headers={"Authorization": f"token {sidecar_token(hub)}"}
        ).json()
        response = hub.get(port_url(hub, "erin", 5000), headers={"X-Proxy-Token": token})
        target = table.get("/ports/erin/5000", {}).get("target")
        return target == f"http://127.0.0.1:{new_port}" and response.status_code == 200

    wait_for(follows, 60, "the routes and the app after a container restart", hub.log_path)
    hub.stop_server("erin")
    assert not any(p.startswith("/ports/erin/") for p in hub.port_routes())


def test_migration_from_jhproxy(make_hub, engine):
    """A config written like jhproxy's example, after the changes in docs/source/migrating.md."""
    hub = docker_hub(
        make_hub,
        engine,
        internal_ip=False,
        spawner="jhproxy_routes.spawners.TokenizedDockerSpawner",
        ports=[{"port": 5000, "strip_prefix": True}, {"port": 5001, "strip_prefix": True}],
        extra="""
c.PortRoutes.route_template = "/hub/proxy{port}/{username}/"
c.TokenizedDockerSpawner.default_startup_behavior = "random"
c.TokenizedDockerSpawner.shutdown_behavior = "disable"
""",
    )
    api_token = hub.user_token("seeduser")
    hub.spawn("seeduser")
    token = hub.proxytoken(api_token).json()  # random at first start, as in jhproxy
    assert isinstance(token, str) and token
    response = hub.get("/hub/proxy5000/seeduser/api/items?x=1", headers={"X-Proxy-Token": token})
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "/api/items"  # jhproxy forwarded the path below the prefix
    assert hub.get("/hub/proxy5000/seeduser/", headers={"X-Proxy-Token": "wrong"}).status_code == 403
    # the hub's login cookie never reaches the app, even on this /hub/ path
    response = hub.get("/hub/proxy5001/seeduser/", headers={"X-Proxy-Token": token, "Cookie": "jupyterhub-hub-login=SECRET"})
    assert "SECRET" not in response.text
    hub.stop_server("seeduser")
    assert hub.proxytoken(api_token).json() is None  # shutdown_behavior = disable
