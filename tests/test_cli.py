"""The ``jhproxy-routes`` command (the installed console script) against a real hub, CHP,
sidecar, servers and app: list, show, set, and ``check`` on config files."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from jhproxy_routes.cli import main
from tests.rig import ADMIN_TOKEN

CLI = Path(sys.executable).parent / "jhproxy-routes"


def run(*args, token=None, hub=None, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    if token:
        env["JUPYTERHUB_API_TOKEN"] = token
    command = [str(CLI), *(["--hub-url", hub.url] if hub else []), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


@pytest.fixture(scope="module")
def apps(make_app):
    return {"api": make_app(), "dash": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    hub = make_hub(
        [apps["api"].port, {"port": apps["dash"].port, "name": "dashboard", "access": "public"}],
        "c.PortRoutes.scope_cookies = False  # public ports get direct routes here",
    )
    for user in ("carol", "dave"):
        hub.user_token(user)
        hub.spawn(user)
    return hub


def test_list_shows_owner_port_target_mode_and_access(hub, apps):
    result = run("list", "--json", token=ADMIN_TOKEN, hub=hub)
    assert result.returncode == 0, result.stderr
    routes = {(r["user"], r["port"]): r for r in json.loads(result.stdout)}
    assert set(routes) == {(u, apps[a].port) for u in ("carol", "dave") for a in ("api", "dash")}
    api = routes[("carol", apps["api"].port)]
    assert api["via"] == "sidecar" and api["target"] == f"http://127.0.0.1:{apps['api'].port}"
    assert api["mode"] == "disabled" and api["access"] == "server" and api["path"] == f"/ports/carol/{apps['api'].port}/"
    dash = routes[("carol", apps["dash"].port)]
    assert dash["via"] == "direct" and dash["access"] == "public" and dash["name"] == "dashboard"

    text = run("list", "--user", "dave", token=ADMIN_TOKEN, hub=hub).stdout
    assert text.splitlines()[0].split() == ["USER", "SERVER", "PORT", "VIA", "MODE", "ACCESS", "TARGET", "PATH"]
    assert len(text.splitlines()) == 3 and "carol" not in text


def test_a_user_token_sees_and_changes_only_its_own(hub, apps):
    carol = hub.user_token("carol")
    routes = json.loads(run("list", "--json", token=carol, hub=hub).stdout)
    assert {r["user"] for r in routes} == {"carol"}
    # what a curious user would try: another user's settings, by name
    for args in (("show", "dave"), ("set", "dave", "--mode", "allow_all")):
        result = run(*args, token=carol, hub=hub)
        assert result.returncode == 1 and "lacks the scope" in result.stderr, result
        assert "Traceback" not in result.stderr
    assert json.loads(run("show", "dave", "--json", token=ADMIN_TOKEN, hub=hub).stdout)["mode"] == "disabled"


def test_set_and_show_change_what_the_port_admits(hub, apps):
    url = f"{hub.url}/ports/dave/{apps['api'].port}/x"
    assert httpx.get(url).status_code == 403
    result = run("set", "dave", "--mode", "random", token=ADMIN_TOKEN, hub=hub)
    assert result.returncode == 0, result.stderr
    token = next(line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("token: "))
    assert httpx.get(url, headers={"X-Proxy-Token": token}).status_code == 200
    shown = run("show", "dave", token=ADMIN_TOKEN, hub=hub).stdout
    assert "mode token" in shown and token not in shown and "--show-token" in shown
    assert token in run("show", "dave", "--show-token", token=ADMIN_TOKEN, hub=hub).stdout

    result = run("set", "dave", "--port", f"{apps['api'].port}=public", token=ADMIN_TOKEN, hub=hub)
    assert result.returncode == 0, result.stderr
    assert httpx.get(url).status_code == 200
    assert hub.port_routes()[f"/ports/dave/{apps['api'].port}"]["target"] == f"http://127.0.0.1:{apps['api'].port}"
    # the audit log says who did it to whom
    entries = [json.loads(line) for line in (hub.dir / "jhproxy-routes-audit.jsonl").read_text().splitlines()]
    assert {"user": "dave", "by": "test-admin"}.items() <= entries[-1].items()


@pytest.mark.parametrize(
    "args, message",
    [
        (("show", "nobody"), "404 No user named 'nobody'"),
        (("show", "dave/nosuch"), "404 User dave has no server named 'nosuch'"),
        (("set", "dave", "--port", "1=public"), "Port 1 is not in the allow-list"),
        (("set", "dave", "--port", "5000=everyone"), "write PORT=ACCESS"),
        (("set", "dave"), "nothing to set"),
    ],
)
def test_mistakes_get_one_clear_line(hub, args, message):
    result = run(*args, token=ADMIN_TOKEN, hub=hub)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result


def test_no_token_or_no_hub_is_said_plainly(hub):
    result = run("list", hub=hub)
    assert result.returncode == 1 and "set JUPYTERHUB_API_TOKEN" in result.stderr
    result = run("--hub-url", "http://127.0.0.1:1", "list", token=ADMIN_TOKEN)
    assert result.returncode == 1 and "cannot reach the hub at http://127.0.0.1:1/" in result.stderr
    result = run("list", token="not-a-token", hub=hub)
    assert result.returncode == 1 and "403" in result.stderr


def write_config(tmp_path, body: str) -> Path:
    path = tmp_path / "jupyterhub_config.py"
    path.write_text("import jhproxy_routes\n" + textwrap.dedent(body) + "\njhproxy_routes.install(c)\n")
    return path


def check_here(path: Path, capsys) -> tuple[int, str]:
    """``jhproxy-routes check`` in this process (each run of the command loads JupyterHub
    anew, ~4 s; the console script itself is run in the test of a bad config)."""
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(path)])
    return exit_.value.code, capsys.readouterr().out


def test_check_passes_a_good_config(tmp_path, capsys):
    path = write_config(
        tmp_path,
        """
        c.JupyterHub.spawner_class = "docker"
        c.PortRoutes.ports = [5000, {"port": 8050, "access": "public", "cors_origins": ["https://example.org"]}]
    """,
    )
    code, out = check_here(path, capsys)
    assert code == 0 and "no problems found" in out, out


def test_check_reports_every_problem_of_a_bad_config(tmp_path):
    path = write_config(
        tmp_path,
        """
        c.JupyterHub.spawner_class = "docker"
        c.PortRoutes.ports = [5000, 8888, {"port": 5001, "acess": "public"}, 5000]
        c.PortRoutes.port = [1]
        c.PortRoutes.reconcile_interval = -1
        c.PortRoutes.route_template = "/ports/{port}/"
        c.PortRoutes.cors_origins = ["https://example.org/"]
        c.PortRoutes.sidecar_managed = False
    """,
    )
    result = run("check", str(path))
    assert result.returncode == 1, result
    out = result.stdout
    for expected in (
        "c.PortRoutes.port is not an option (did you mean ports?)",
        "unknown key(s) ['acess']",
        "port 5000 is listed twice",
        "reconcile_interval: -1 is too small",
        "must contain {username}",
        "port 8888 is where DockerSpawner runs the Jupyter server itself",
        "'https://example.org/' is not an origin",
        "sidecar_managed is False but no sidecar_api_token",
        "7 error(s), 1 warning(s)",
    ):
        assert expected in out, f"{expected!r} not in:\n{out}"
    assert "Traceback" not in result.stderr


def test_check_shared_hosts(tmp_path, capsys):
    """LocalProcessSpawner runs each server as its user's own system user: its routes need
    no allow_shared_host. SimpleLocalProcessSpawner runs them all as the hub's: they do."""
    path = write_config(tmp_path, "c.PortRoutes.ports = [5000]")
    code, out = check_here(path, capsys)
    assert code == 0 and "no problems found" in out, out
    simple = "c.PortRoutes.ports = [5000]\nc.JupyterHub.spawner_class = 'simple'"
    code, out = check_here(write_config(tmp_path, simple), capsys)
    expected = "SimpleLocalProcessSpawner runs every server as the hub's own system user on the hub's machine"
    assert code == 0 and expected in out and "c.PortRoutes.allow_shared_host = True" in out, out
    for allowed in ("c.PortRoutes.allow_shared_host = True", "c.PortRoutes.server_uid = lambda spawner: 1000"):
        assert "share ports" not in check_here(write_config(tmp_path, f"{simple}\n{allowed}"), capsys)[1]
    # SystemdSpawner (known by its traits; systemdspawner is not installed here) with dynamic
    # users: whose uid a server runs as is not known
    systemd = textwrap.dedent("""
        from jupyterhub.spawner import Spawner
        from traitlets import Bool, Unicode

        class SystemdSpawner(Spawner):
            unit_name_template = Unicode(config=True)
            username_template = Unicode(config=True)
            dynamic_users = Bool(config=True)

            async def start(self): ...
            async def stop(self, now=False): ...
            async def poll(self): ...

        c.JupyterHub.spawner_class = SystemdSpawner
        c.PortRoutes.ports = [5000]
    """)
    out = check_here(write_config(tmp_path, systemd), capsys)[1]
    assert "share ports" not in out and "does not load" not in out, out
    out = check_here(write_config(tmp_path, systemd + "c.SystemdSpawner.dynamic_users = True"), capsys)[1]
    assert "SystemdSpawner runs every server under dynamic users, whose uids it does not know" in out, out


def test_check_local_servers_and_files_that_do_not_load(tmp_path, capsys):
    path = write_config(tmp_path, "c.PortRoutes.ports = [5000, '8000-8099']\nc.PortRoutes.allow_shared_host = True")
    code, out = check_here(path, capsys)
    assert code == 0 and "port 8081 is the hub's own port on this machine: it never gets a route" in out, out
    assert "port 8000 is the proxy's public port" in out and "port 8001 is the proxy's API" in out
    path = write_config(
        tmp_path, "c.PortRoutes.sidecar_api_urls = ['http://a:1', 'http://b:1']\nc.PortRoutes.reconcile_interval = 0"
    )
    assert "sidecar replicas need periodic reconciliations" in check_here(path, capsys)[1]
    host_template = "c.PortRoutes.ports = [5000]\nc.PortRoutes.route_template = '{port}--{username}.{subdomain_host}'"
    path = write_config(tmp_path, host_template)
    assert "is a host template: it needs c.JupyterHub.subdomain_host" in check_here(path, capsys)[1]
    path = write_config(tmp_path, host_template + "\nc.JupyterHub.subdomain_host = 'https://hub.example.org'")
    code, out = check_here(path, capsys)
    assert code == 0 and "host template" not in out, out
    path = write_config(
        tmp_path,
        host_template + "\nc.JupyterHub.subdomain_host = 'https://hub.example.org'\nc.JupyterHub.subdomain_hook = 'legacy'",
    )
    assert "it needs JupyterHub's default subdomain_hook ('idna')" in check_here(path, capsys)[1]
    path = write_config(tmp_path, host_template + "\nc.JupyterHub.subdomain_host = 'http://hub.example.org'")
    code, out = check_here(path, capsys)
    assert code == 0 and "over plain HTTP (http://hub.example.org)" in out and "(cookie tossing" in out, out
    assert "Chromium sends no fetch metadata (Sec-Fetch-*) to plain-HTTP hosts other than localhost" in out
    path = write_config(
        tmp_path,
        host_template
        + "\nc.JupyterHub.subdomain_host = 'https://hub.example.org'\nc.JupyterHub.cookie_host_prefix_enabled = False",
    )
    code, out = check_here(path, capsys)
    assert code == 1 and "error: c.JupyterHub.cookie_host_prefix_enabled is False, but" in out, out
    path = write_config(tmp_path, host_template + "\nc.JupyterHub.subdomain_host = 'https://hub.example.org'\n")
    out = check_here(path, capsys)[1]
    assert "cookie_host_prefix_enabled" not in out  # unset: the hub turns it on
    assert "note: ports are on hosts below the hub's domain (hub.example.org): a port's page" in out
    assert "(a cookie bomb); a port domain apart from the hub's" in out
    path = write_config(
        tmp_path, "c.PortRoutes.ports = [5000]\nc.PortRoutes.route_template = '/{username}/{servername}/proxy/{port}/'"
    )
    code, out = check_here(path, capsys)
    assert code == 1 and "c.PortRoutes.route_template: '/{username}/{servername}/proxy/{port}/' begins with {username}" in out, (
        out
    )
    (tmp_path / "broken.py").write_text("c.PortRoutes.ports = [5000\n")
    code, out = check_here(tmp_path / "broken.py", capsys)
    assert code == 1 and "the file does not load: SyntaxError" in out, out
    (tmp_path / "plain.py").write_text("c.PortRoutes.ports = [5000]\n")
    assert "proxy_class is not set: call jhproxy_routes.install(c)" in check_here(tmp_path / "plain.py", capsys)[1]


def test_check_explains_a_port_domain(tmp_path, capsys):
    """A port domain apart from the hub's is accepted and explained; one that is not, refused."""
    config = "c.JupyterHub.spawner_class = 'docker'\nc.PortRoutes.ports = [5000]\nc.JupyterHub.subdomain_host = '{hub}'\n"
    config += "c.PortRoutes.route_template = '{{port}}--{{username}}.{ports}'"
    path = write_config(tmp_path, config.format(hub="https://hub.example.org", ports="example-content.org"))
    code, out = check_here(path, capsys)
    assert code == 0 and "no problems found" in out, out
    assert "note: ports are on example-content.org, a domain apart from the hub's (hub.example.org): their pages cannot" in out
    assert "*.example-content.org must lead to the proxy (DNS)" in out
    # one registrable domain (unless example.org were a public suffix): one site with the hub
    path = write_config(tmp_path, config.format(hub="https://hub.example.org", ports="ports.example.org"))
    code, out = check_here(path, capsys)
    assert code == 0 and "warning: the port domain ports.example.org and the hub's hub.example.org both end in example.org" in out
    path = write_config(tmp_path, config.format(hub="http://hub.example.org", ports="example-content.org"))
    out = check_here(path, capsys)[1]
    assert "a port's page cannot touch the hub's cookies, but can set cookies for every port host" in out, out
    path = write_config(tmp_path, config.format(hub="https://hub.example.org", ports="example.org"))
    code, out = check_here(path, capsys)
    assert code == 1 and "'example.org' is a parent of the hub's domain (hub.example.org)" in out, out
    assert "note:" not in out


def test_check_takes_traefik_as_the_littlest_jupyterhub_runs_it(tmp_path, capsys):
    """TLJH's traefik_file is checked as CHP is (Traefik's API port among the hub's own);
    so are its etcd and redis providers (their stores' ports too); consul is refused, also
    when install(c) is not called yet."""
    path = write_config(
        tmp_path,
        """
        c.JupyterHub.proxy_class = "traefik_file"
        c.TraefikProxy.should_start = False
        c.TraefikProxy.traefik_api_url = "http://127.0.0.1:8099"
        c.JupyterHub.spawner_class = "simple"
        c.PortRoutes.ports = [5000, 8099]
        c.PortRoutes.allow_shared_host = True
        """,
    )
    code, out = check_here(path, capsys)
    assert code == 0 and "warning: port 8099 is Traefik's API on this machine: it never gets a route" in out, out
    (tmp_path / "redis.py").write_text(
        'c.JupyterHub.proxy_class = "traefik_redis"\nc.TraefikRedisProxy.redis_url = "redis://127.0.0.1:6380"\n'
        'c.JupyterHub.spawner_class = "simple"\nc.PortRoutes.ports = [5000, 6380]\nc.PortRoutes.allow_shared_host = True\n'
        "import jhproxy_routes\njhproxy_routes.install(c)\n"
    )
    code, out = check_here(tmp_path / "redis.py", capsys)
    assert code == 0 and "warning: port 6380 is the redis store of the routes on this machine" in out, out
    (tmp_path / "consul.py").write_text('c.JupyterHub.proxy_class = "traefik_consul"\nc.PortRoutes.ports = [5000]\n')
    code, out = check_here(tmp_path / "consul.py", capsys)
    assert code == 1 and "c.JupyterHub.proxy_class is 'traefik_consul': jhproxy-routes works with Traefik's file, etcd" in out, (
        out
    )
    assert "call jhproxy_routes.install(c)" not in out
