"""Hub-side hardening, from the attacker's side (or the unlucky admin's), against a real hub,
CHP, sidecar, single-user servers and apps: failures of the port routes never fail a spawn;
the routes follow a moved proxy; settings die with their user or server; a server's own token
manages that server only."""

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.rig import ADMIN_TOKEN, CHP, free_port, port_open, wait_for

# A spawner that breaks on purpose while a flag file exists in the hub's directory: reading
# default_startup_behavior or shutdown_behavior (the port routes read them, the hub does not)
# raises; with SLOW_STOP, stop() takes that many seconds.
TEST_SPAWNER = """
import asyncio, os
from jupyterhub.spawner import SimpleLocalProcessSpawner

class TestSpawner(SimpleLocalProcessSpawner):
    @property
    def default_startup_behavior(self):
        if os.path.exists("BROKEN"):
            raise RuntimeError("spawner broken on purpose")
        return None

    @property
    def shutdown_behavior(self):
        if os.path.exists("BROKEN_STOP"):
            raise RuntimeError("spawner broken on purpose at stop")
        return None

    async def stop(self, now=False):
        if os.path.exists("SLOW_STOP"):
            await asyncio.sleep(float(open("SLOW_STOP").read() or 8))
        return await super().stop(now=now)

c.JupyterHub.spawner_class = TestSpawner
c.JupyterHub.slow_stop_timeout = 1  # a slow stop: the API answers 202 while it goes on
"""


def metric(hub, name: str, **labels) -> float:
    response = httpx.get(hub.url + "/hub/metrics", headers={"Authorization": f"token {ADMIN_TOKEN}"}, timeout=30)
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def audit(hub) -> list[dict]:
    path = hub.dir / "jhproxy-routes-audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def server_token(hub, user: str, server: str = "") -> str:
    """The $JUPYTERHUB_API_TOKEN of a real single-user server process."""
    for pid in hub.child_pids("jupyterhub-singleuser"):
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        if env.get("JUPYTERHUB_USER") == user and env.get("JUPYTERHUB_SERVER_NAME", "") == server:
            return env["JUPYTERHUB_API_TOKEN"]
    raise AssertionError(f"the process of {user}/{server} was not found")


# ---- an unexpected error never fails a spawn (item 12) ---------------------------------
@pytest.fixture(scope="module")
def flaky(make_hub, make_app):
    app, protected = make_app(), make_app()
    hub = make_hub([{"port": app.port, "access": "public"}, protected.port], TEST_SPAWNER, name="flaky")
    return hub, app, protected


def test_unexpected_error_never_fails_a_spawn(flaky):
    hub, app, _ = flaky
    route = f"/ports/flaky/{app.port}"
    (hub.dir / "BROKEN").touch()
    start_errors = metric(hub, "jhproxy_routes_server_update_errors_total", event="start")
    reconcile_errors = metric(hub, "jhproxy_routes_reconcile_errors_total")
    hub.user_token("flaky")
    hub.spawn("flaky")  # ready: the error did not fail it
    log = hub.log()
    assert "port routes of flaky/ not added yet, left to the next reconciliation: spawner broken on purpose" in log
    assert "RuntimeError: spawner broken on purpose" in log  # the traceback
    assert metric(hub, "jhproxy_routes_server_update_errors_total", event="start") == start_errors + 1
    # every reconciliation tries again, and says so
    wait_for(lambda: metric(hub, "jhproxy_routes_reconcile_errors_total") > reconcile_errors, 20, "a reconciliation error")
    assert "routes of flaky/ left as they are, will retry" in hub.log()
    assert route not in hub.port_routes()
    assert hub.api("GET", "/users/flaky").json()["servers"][""]["ready"]
    (hub.dir / "BROKEN").unlink()  # the cause is gone: the next reconciliation routes the ports
    wait_for(lambda: route in hub.port_routes(), 20, "the port route after the fix", hub.log_path)
    assert hub.get(route + "/x").status_code == 200
    assert "Task exception was never retrieved" not in hub.log()


def test_token_revoked_mid_stop_is_refused_at_once(flaky):
    """A server stops slowly, and its port routes were left in place (their removal failed):
    the owner revokes the token meanwhile, and the old token must stop working at once."""
    hub, _, protected = flaky
    user_token = hub.user_token("stopper")
    hub.spawn("stopper")
    token = hub.proxytoken(user_token, "POST", content="random").json()
    url = f"/ports/stopper/{protected.port}/x"
    assert hub.get(url, headers={"X-Proxy-Token": token}).status_code == 200
    (hub.dir / "BROKEN_STOP").touch()
    (hub.dir / "SLOW_STOP").write_text("10")
    try:
        assert hub.api("DELETE", "/users/stopper/server").status_code == 202
        assert hub.api("GET", "/users/stopper").json()["servers"][""]["pending"] == "stop"
        assert f"/ports/stopper/{protected.port}" in hub.port_routes()
        assert hub.get(url, headers={"X-Proxy-Token": token}).status_code == 200  # the gap being closed
        assert hub.proxytoken(user_token, "POST", content="disabled").status_code == 200
        seen = len(protected.received())
        assert hub.get(url, headers={"X-Proxy-Token": token}).status_code != 200
        assert len(protected.received()) == seen  # nothing reached the app
        assert hub.api("GET", "/users/stopper").json()["servers"][""]["pending"] == "stop"  # still stopping
    finally:
        (hub.dir / "BROKEN_STOP").unlink()
        (hub.dir / "SLOW_STOP").unlink()
    wait_for(lambda: "" not in hub.api("GET", "/users/stopper").json()["servers"], 60, "the stop to finish", hub.log_path)


# ---- the route manager follows a moved proxy (item 11) ---------------------------------
def start_chp(log: Path, public: int, api: int, token: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(CHP), "--ip", "127.0.0.1", "--port", str(public), "--api-ip", "127.0.0.1", "--api-port", str(api)],
        env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: port_open(api), 30, "CHP's API", log)
    return proc


def test_moved_proxy_gets_the_port_routes_at_once(make_hub, make_app, module_tmp):
    """The hub runs with an external CHP, which goes away; the admin moves the hub to a new
    one with PATCH /hub/api/proxy. The port routes must follow, at once, and the PATCH must
    not wait for the old proxy (api_retry_timeout is 30 s here)."""
    app = make_app()
    hub = make_hub(
        [{"port": app.port, "access": "public"}],
        "c.ConfigurableHTTPProxy.should_start = False\nc.PortRoutes.api_retry_timeout = 30",
        name="mover",
        start=False,
    )
    old = start_chp(module_tmp / "chp-old.log", hub.port, hub.api_port, hub.chp_token)
    public, api, token = free_port(), free_port(), "t" * 32
    new = None
    try:
        hub.start()
        route = f"/ports/mover/{app.port}"
        hub.user_token("mover")
        hub.spawn("mover")
        wait_for(lambda: route in hub.port_routes(), 20, "the port route", hub.log_path)
        old.terminate()
        old.wait(10)
        new = start_chp(module_tmp / "chp-new.log", public, api, token)
        new_routes = lambda: httpx.get(f"http://127.0.0.1:{api}/api/routes", headers={"Authorization": f"token {token}"}).json()  # noqa: E731
        started = time.monotonic()
        # to the hub's own port: its public one was the old proxy's
        response = httpx.patch(
            f"http://127.0.0.1:{hub.hub_port}/hub/api/proxy",
            headers={"Authorization": f"token {ADMIN_TOKEN}"},
            json={"api_url": f"http://127.0.0.1:{api}", "auth_token": token},
            timeout=120,
        )
        took = time.monotonic() - started
        print(f"PATCH /hub/api/proxy took {took:.3f} s")
        assert response.status_code == 200, response.text
        assert took < 10, took  # was api_retry_timeout and more: add_user retried the old proxy
        assert new_routes()[route]["jhproxy_routes"]  # at once
        assert httpx.get(f"http://127.0.0.1:{public}{route}/x").status_code == 200
        # reconciliations keep the new proxy's table, with its new token
        httpx.delete(f"http://127.0.0.1:{api}/api/routes{route}", headers={"Authorization": f"token {token}"})
        wait_for(lambda: route in new_routes(), 20, "the route back in the new proxy", hub.log_path)
    finally:
        for proc in (old, new):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)


# ---- settings die with their user or server (item 2) -----------------------------------
@pytest.fixture(scope="module")
def apps(make_app):
    return {"token": make_app(), "other": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    # no periodic reconciliation: a deletion must take the settings along by itself, at once
    return make_hub([apps["token"].port, apps["other"].port], "c.PortRoutes.reconcile_interval = 0", name="shared")


def make_it_open(hub, apps, user: str, server: str = "") -> str:
    """The owner sets a port token and makes the other port public; the token, checked."""
    settings = {"mode": "random", "ports": {str(apps["other"].port): "public"}}
    token = hub.proxytoken(hub.user_token(user), "POST", server=server, json=settings).json()["token"]
    base = f"/ports/{user}/{server + '/' if server else ''}"
    assert hub.get(f"{base}{apps['token'].port}/x", headers={"X-Proxy-Token": token}).status_code == 200
    assert hub.get(f"{base}{apps['other'].port}/x").status_code == 200
    return token


def assert_closed_to_old_settings(hub, apps, user: str, server: str, old_token: str) -> None:
    base = f"/ports/{user}/{server + '/' if server else ''}"
    routes = hub.port_routes()
    assert f"{base}{apps['token'].port}" in routes and f"{base}{apps['other'].port}" in routes
    assert hub.get(f"{base}{apps['token'].port}/x", headers={"X-Proxy-Token": old_token}).status_code == 403
    assert hub.get(f"{base}{apps['other'].port}/x").status_code == 403
    assert hub.proxytoken(hub.user_token(user), server=server).json() is None  # a new server starts disabled


def test_deleted_user_takes_its_settings_along(hub, apps):
    hub.user_token("bob")
    hub.spawn("bob")
    old_token = make_it_open(hub, apps, "bob")
    hub.spawn("bob", "side")
    make_it_open(hub, apps, "bob", "side")
    hub.stop_server("bob")
    hub.stop_server("bob", "side")
    assert hub.api("DELETE", "/users/bob").status_code == 204
    deleted = lambda: {(e["server"], e["why"]) for e in audit(hub) if e["event"] == "settings deleted" and e["user"] == "bob"}  # noqa: E731
    wait_for(lambda: len(deleted()) == 2, 10, "the audit records")
    assert deleted() == {("", "the user was deleted"), ("side", "the user was deleted")}
    hub.user_token("bob")  # a new bob
    hub.spawn("bob")
    assert_closed_to_old_settings(hub, apps, "bob", "", old_token)
    hub.stop_server("bob")


def test_renamed_user_takes_its_settings_along(hub, apps):
    """A rename (PATCH /hub/api/users/<name>) moves the settings with the user: a new user of
    the old name starts afresh, never with the old token or the old public port."""
    hub.user_token("rita")
    hub.spawn("rita")
    old_token = make_it_open(hub, apps, "rita")
    hub.stop_server("rita")
    response = hub.api("PATCH", "/users/rita", json={"name": "rita-old"})
    assert response.status_code == 200, response.text
    wait_for(lambda: any(e["event"] == "settings moved" and e["user"] == "rita-old" for e in audit(hub)), 10, "the audit record")
    assert hub.proxytoken(ADMIN_TOKEN, params={"user": "rita-old"}).json() == old_token  # still the renamed user's
    hub.user_token("rita")  # a new rita, at once
    hub.spawn("rita")
    assert_closed_to_old_settings(hub, apps, "rita", "", old_token)
    hub.stop_server("rita")


def test_deleted_named_server_takes_its_settings_along(hub, apps):
    hub.user_token("nora")
    hub.spawn("nora", "x")
    old_token = make_it_open(hub, apps, "nora", "x")
    response = hub.api("DELETE", "/users/nora/servers/x", json={"remove": True})
    assert response.status_code in (202, 204), response.text
    wait_for(lambda: "x" not in hub.api("GET", "/users/nora").json()["servers"], 30, "the server to go")
    wait_for(lambda: any(e["event"] == "settings deleted" and e["user"] == "nora" for e in audit(hub)), 10, "the audit record")
    record = next(e for e in audit(hub) if e["event"] == "settings deleted" and e["user"] == "nora")
    assert record["server"] == "x" and record["why"] == "the server was deleted"
    hub.spawn("nora", "x")  # a new server of that name
    assert_closed_to_old_settings(hub, apps, "nora", "x", old_token)
    hub.stop_server("nora", "x")


def test_settings_of_servers_deleted_while_the_hub_was_down_go_too(make_hub, apps):
    hub = make_hub([apps["token"].port, apps["other"].port], name="down")
    hub.user_token("carl")
    hub.spawn("carl")
    carl_token = make_it_open(hub, apps, "carl")
    hub.stop_server("carl")
    hub.user_token("dana")
    hub.spawn("dana", "y")
    dana_token = make_it_open(hub, apps, "dana", "y")
    hub.stop_server("dana", "y")
    hub.stop()
    with sqlite3.connect(hub.dir / "jupyterhub.sqlite") as db:  # what an admin's script might do
        db.execute("PRAGMA foreign_keys = ON")
        assert db.execute("DELETE FROM users WHERE name = 'carl'").rowcount == 1
        assert db.execute("DELETE FROM spawners WHERE name = 'y'").rowcount == 1
    hub.start()
    wanted = {("carl", "", "the user no longer exists"), ("dana", "y", "the server no longer exists")}
    deleted = lambda: {(e["user"], e["server"], e["why"]) for e in audit(hub) if e["event"] == "settings deleted"}  # noqa: E731
    wait_for(lambda: wanted <= deleted(), 20, "the audit records", hub.log_path)
    with sqlite3.connect(hub.dir / "jhproxy_routes.sqlite") as db:
        assert db.execute("SELECT username, servername FROM jhproxy_routes_server_access").fetchall() == []
    hub.user_token("carl")
    hub.spawn("carl")
    assert_closed_to_old_settings(hub, apps, "carl", "", carl_token)
    hub.spawn("dana", "y")
    assert_closed_to_old_settings(hub, apps, "dana", "y", dana_token)


# ---- a server's own token manages that server only (item 5) ----------------------------
def test_a_servers_token_manages_that_server_only(hub, apps):
    user_token = hub.user_token("erin")
    hub.spawn("erin")
    hub.spawn("erin", "scratch")
    default_port_token = hub.proxytoken(user_token, "POST", content="random").json()
    scratch, default = server_token(hub, "erin", "scratch"), server_token(hub, "erin")
    # code in scratch goes for the default server's port token and settings
    for method, kwargs in [
        ("GET", {}),
        ("GET", {"params": {"format": "full"}}),
        ("POST", {"content": "allow_all"}),
        ("POST", {"json": {"ports": {str(apps["other"].port): "public"}}}),
    ]:
        response = hub.proxytoken(scratch, method, **kwargs)
        assert response.status_code == 403, (method, kwargs, response.text)
        assert default_port_token not in response.text
    assert hub.proxytoken(default, server="scratch", method="POST", content="allow_all").status_code == 403
    assert hub.proxytoken(user_token).json() == default_port_token  # nothing changed
    assert hub.get(f"/ports/erin/{apps['token'].port}/x").status_code == 403
    # the route list shows scratch's routes only
    rows = hub.api("GET", "/jhproxy-routes/routes", token=scratch).json()
    assert rows and {row["server"] for row in rows} == {"scratch"}
    # each server's token manages its own server; the user's token both
    assert hub.proxytoken(scratch, "POST", server="scratch", content="random").status_code == 200
    assert hub.proxytoken(default, "POST", content="random").status_code == 200
    assert hub.proxytoken(user_token, server="scratch").status_code == 200
    assert hub.proxytoken(user_token, "POST", content="disabled").status_code == 200
    hub.stop_server("erin", "scratch")
    hub.stop_server("erin")


# ---- values from requests are logged escaped (item 10, hub side) -----------------------
def test_request_values_cannot_forge_log_lines(hub):
    token = hub.user_token("mallory")
    forged = "\n[E 2026-01-01 00:00:00.000 JupyterHub app:1] FORGED \x1b[2J"
    assert hub.proxytoken(token, params={"user": "victim" + forged}).status_code == 403
    assert hub.proxytoken(token, "POST", json={"ports": {"5" + forged: "public"}}).status_code == 400
    log = hub.log()
    assert log.count("FORGED") >= 2  # logged, as one line each
    assert not any(line.lstrip().startswith("[E 2026-01-01") for line in log.splitlines())  # (tornado indents a 2nd line)
    assert "\x1b[2J" not in log  # (CHP's own lines have colours: not ours)


# ---- the Kubernetes example lets only the proxy and the hub reach the sidecars ----------
def test_kubernetes_sidecars_are_reachable_from_the_proxy_and_the_hub_only():
    import yaml

    k8s = Path(__file__).resolve().parent.parent / "examples/kubernetes"
    docs = list(yaml.safe_load_all((k8s / "sidecar.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    spec = policy["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()  # selects the sidecar pods
    assert spec["policyTypes"] == ["Ingress"] and len(spec["ingress"]) == 1
    sources = spec["ingress"][0]["from"]
    assert all(set(source) == {"podSelector"} for source in sources)  # no namespace or address blocks
    selectors = [source["podSelector"]["matchLabels"] for source in sources]
    # the chart's labels, as values.yaml's own policy selects the proxy
    proxy_selector = yaml.safe_load((k8s / "values.yaml").read_text())["singleuser"]["networkPolicy"]["ingress"][0]["from"][0]
    assert sorted(selectors, key=str) == [{"component": "hub"}, proxy_selector["podSelector"]["matchLabels"]]
    container_ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert {p["port"] for p in spec["ingress"][0]["ports"]} <= container_ports
