"""Operating as on Kubernetes (Zero to JupyterHub), with everything that runs here:

- CHP started on its own, not by the hub (the chart's proxy pod): the hub only has its API
  URL and token;
- the sidecar as several replicas started from ``examples/kubernetes/sidecar.yaml`` (its
  command and environment, values filled in), behind a round-robin balancer (the Service);
- the hub loads the ``hub.extraConfig`` of ``examples/kubernetes/values.yaml`` and finds the
  replicas by a name that resolves to all of them (the headless Service): the hub runs in a
  private mount namespace whose ``/etc/hosts`` gives that name one address per replica.

Real processes throughout: jupyterhub, CHP, the sidecars, a single-user server, an app.
"""

import asyncio
import itertools
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.rig import CHP, REPO, free_port, port_open, wait_for

K8S = REPO / "examples/kubernetes"
REPLICAS_NAME = "sidecar-replicas.test"
SECRET = secrets.token_hex(32)


class Balancer:
    """A TCP round robin over the replicas, one backend per connection (a Service)."""

    def __init__(self, backends: list[tuple[str, int]]):
        self.backends = itertools.cycle(backends)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    async def _connection(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*next(self.backends))
        except OSError:
            writer.close()
            return

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class Replica:
    """One sidecar replica, started as the manifest's Deployment starts it."""

    def __init__(self, tmp: Path, ip: str, port: int, hub_api: str):
        container = manifest("Deployment")["spec"]["template"]["spec"]["containers"][0]
        command = [sys.executable if c == "python3" else c for c in container["command"]]
        command[command.index("--ip") + 1] = ip
        command[command.index("--port") + 1] = str(port)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "JHPROXY_"))}
        for item in container["env"]:
            if "valueFrom" in item:
                env[item["name"]] = SECRET  # the one secret the hub also has
            else:
                env[item["name"]] = hub_api if item["name"] == "JUPYTERHUB_API_URL" else item["value"]
        self.ip, self.port = ip, port
        self.url = f"http://{ip}:{port}"
        self.command, self.env = command, env
        self.log_path = tmp / f"sidecar-{ip}.log"
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=self.log_path.open("a"), stderr=subprocess.STDOUT)
        wait_for(
            lambda: httpx.get(self.url + "/_jhproxy-routes/health").status_code == 200,
            20,
            f"sidecar at {self.url}",
            self.log_path,
        )

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)

    def table(self) -> dict:
        return httpx.get(self.url + "/_jhproxy-routes/api/routes", headers={"Authorization": f"token {SECRET}"}).json()

    def ready(self) -> int:
        return httpx.get(self.url + "/_jhproxy-routes/ready").status_code

    def forwarded(self, route: str) -> float:
        text = httpx.get(self.url + "/_jhproxy-routes/metrics", headers={"Authorization": f"token {SECRET}"}).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "jhproxy_routes_sidecar_requests_total" and s.labels == {"route": route, "outcome": "forwarded"}:
                    return s.value
        return 0.0


def manifest(kind: str) -> dict:
    return next(d for d in yaml.safe_load_all((K8S / "sidecar.yaml").read_text()) if d["kind"] == kind)


def extra_config() -> str:
    return yaml.safe_load((K8S / "values.yaml").read_text())["hub"]["extraConfig"]["jhproxy-routes"]


@pytest.fixture(scope="module")
def rig(make_hub, make_app, module_tmp):
    app = make_app()
    sidecar_port = free_port()
    hosts = module_tmp / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {REPLICAS_NAME}\n127.0.0.2 {REPLICAS_NAME}\n")
    # the values.yaml snippet, then what differs on one machine: addresses, files, this app
    config = (
        extra_config()
        + f"""
c.ConfigurableHTTPProxy.should_start = False
c.PortRoutes.ports = [{app.port}]
c.PortRoutes.sidecar_url = "http://127.0.0.1:{{balancer}}"
c.PortRoutes.sidecar_api_urls = ["http://{REPLICAS_NAME}:{sidecar_port}"]
c.PortRoutes.db_url = "sqlite:///jhproxy_routes.sqlite"
c.PortRoutes.audit_log = "jhproxy-routes-audit.jsonl"
c.PortRoutes.api_retry_timeout = 2  # a dead replica is given up on sooner
c.PortRoutes.sidecar_ready_for = 8  # (values.yaml: 300) a replica the hub lost drops out sooner
c.JupyterHub.last_activity_interval = 2  # (default 300) port activity is collected this often
"""
    )
    unshare = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    hub = make_hub([app.port], "", start=False, env={"JHPROXY_ROUTES_SIDECAR_TOKEN": SECRET}, command_prefix=unshare)
    hub_api = f"http://127.0.0.1:{hub.hub_port}/hub/api"
    replicas = [Replica(module_tmp, ip, sidecar_port, hub_api) for ip in ("127.0.0.1", "127.0.0.2")]
    balancer = Balancer([(r.ip, r.port) for r in replicas])
    config_path = hub.dir / "jupyterhub_config.py"
    config_path.write_text(config_path.read_text() + config.replace("{balancer}", str(balancer.port)))
    chp = RemoteCHP(hub)
    hub.start()
    yield {
        "hub": hub,
        "app": app,
        "replicas": replicas,
        "chp": chp,
        "hosts": hosts,
        "port": sidecar_port,
        "hub_api": hub_api,
        "balancer": balancer,
    }
    for replica in replicas:
        replica.stop()
    chp.stop()


class RemoteCHP:
    """CHP on its own, as the chart's proxy pod: the hub knows only its API and token."""

    def __init__(self, hub):
        self.hub = hub
        self.log_path = hub.dir / "chp.log"
        self.start()

    def start(self):
        hub = self.hub
        command = [
            str(CHP),
            "--ip",
            "127.0.0.1",
            "--port",
            str(hub.port),
            "--api-ip",
            "127.0.0.1",
            "--api-port",
            str(hub.api_port),
            "--error-target",
            f"http://127.0.0.1:{hub.hub_port}/hub/error",
        ]
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": hub.chp_token}
        self.proc = subprocess.Popen(command, env=env, stdout=self.log_path.open("a"), stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(hub.api_port), 20, "the remote CHP", self.log_path)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


@pytest.fixture(scope="module")
def token(rig):
    hub = rig["hub"]
    api_token = hub.user_token("kube")
    hub.spawn("kube")
    return hub.proxytoken(api_token, "POST", content="random").json()


def route_of(rig) -> str:
    return f"/ports/kube/{rig['app'].port}"


def test_the_remote_chp_gets_the_routes(rig, token):
    hub = rig["hub"]
    assert not hub.child_pids("configurable-http-proxy"), "the hub started a CHP of its own"
    assert hub.port_routes()[route_of(rig)]["target"] == f"http://127.0.0.1:{rig['balancer'].port}"


def test_every_replica_has_the_whole_table_and_is_ready(rig, token):
    first, second = rig["replicas"]
    wait_for(lambda: route_of(rig) in first.table() and first.table() == second.table(), 20, "both replicas' tables")
    assert first.ready() == second.ready() == 200


def test_requests_are_checked_by_whichever_replica_gets_them(rig, token):
    url = rig["hub"].url + route_of(rig) + "/x"
    with ThreadPoolExecutor(16) as pool:  # concurrent: CHP opens several connections
        answers = list(pool.map(lambda _: httpx.get(url, headers={"X-Proxy-Token": token}).status_code, range(64)))
        refused = list(pool.map(lambda _: httpx.get(url, headers={"X-Proxy-Token": "guess"}).status_code, range(8)))
    assert answers == [200] * 64 and refused == [403] * 8
    assert all(replica.forwarded(route_of(rig)) > 0 for replica in rig["replicas"]), "the balancer used one replica only"


def test_traffic_on_each_replica_is_the_servers_activity(rig, token):
    hub = rig["hub"]

    def last_activity() -> datetime:
        stamp = hub.api("GET", "/users/kube").json()["servers"][""]["last_activity"]
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    for replica in rig["replicas"]:  # straight to each replica, as CHP would send it
        time.sleep(1.1)  # past the time the other one's request gave
        sent = datetime.now(timezone.utc)
        assert httpx.get(replica.url + route_of(rig) + "/busy", headers={"X-Proxy-Token": token}).status_code == 200
        wait_for(
            lambda: last_activity() >= sent - timedelta(seconds=0.5), 20, f"activity on {replica.url} in the hub", hub.log_path
        )


def test_a_hub_login_made_on_one_replica_holds_on_the_others(rig, token):
    hub = rig["hub"]
    owner = hub.login("kube")
    response = owner.get(route_of(rig) + "/", follow_redirects=True)
    assert response.status_code == 200, response.text
    [cookie] = [c for c in owner.cookies.jar if c.name.startswith("jhproxy-routes-session-")]
    for replica in rig["replicas"]:  # straight to each replica, as CHP would send it
        direct = httpx.get(
            replica.url + route_of(rig) + "/y",
            headers={"Cookie": f"{cookie.name}={cookie.value}", "Accept": "text/html", "Upgrade-Insecure-Requests": "1"},
        )
        assert direct.status_code == 200 and direct.json()["path"] == route_of(rig) + "/y", (replica.url, direct.text[:300])


def test_a_new_replica_is_found_by_name_and_ready_once_it_has_the_table(rig, token, module_tmp):
    third = Replica(module_tmp, "127.0.0.3", rig["port"], rig["hub_api"])
    assert third.ready() == 503 and third.table() == {}
    set_listed(rig["hosts"], "127.0.0.3", True)
    wait_for(lambda: third.ready() == 200, 30, "the new replica to be ready", rig["hub"].log_path)
    assert third.table() == rig["replicas"][0].table()
    # the hub loses sight of it (here: the name forgets it): its table may go stale, so it
    # stops reporting ready once three reconciliations have passed it by
    set_listed(rig["hosts"], "127.0.0.3", False)
    wait_for(lambda: third.ready() == 503, 30, "the unreachable replica to report not ready")
    set_listed(rig["hosts"], "127.0.0.3", True)
    third.stop()  # and dies, still listed under the name: the next test runs so


def set_listed(hosts: Path, ip: str, listed: bool) -> None:
    """Add or remove ``ip`` under the replicas' name, in place (the hub's bind mount sees it)."""
    with hosts.open("r+") as f:
        kept = [line for line in f if ip not in line] + ([f"{ip} {REPLICAS_NAME}\n"] if listed else [])
        f.seek(0)
        f.writelines(kept)
        f.truncate()


def test_a_restarted_remote_chp_gets_the_port_routes_back_despite_a_dead_replica(rig, token):
    hub = rig["hub"]
    wait_for(
        lambda: "sidecar replica left out of this reconciliation: GET sidecar http://127.0.0.3" in hub.log(),
        30,
        "the hub to meet the dead replica",
    )
    rig["chp"].stop()
    rig["chp"].start()
    assert route_of(rig) not in hub.port_routes()
    wait_for(lambda: route_of(rig) in hub.port_routes(), 30, "the route back in the restarted CHP", hub.log_path)
    url = hub.url + route_of(rig) + "/z"
    assert httpx.get(url, headers={"X-Proxy-Token": token}).status_code == 200
    set_listed(rig["hosts"], "127.0.0.3", False)  # the name forgets the dead replica
