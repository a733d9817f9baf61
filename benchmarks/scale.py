"""The route manager at scale: reconcile N servers x 2 ports against a real CHP and sidecar.

``python benchmarks/scale.py [--servers 10000]`` (through ``bash benchmarks/run.sh --scale``)
starts configurable-http-proxy and the sidecar on 127.0.0.1, then runs the hub's
``RouteManager.reconcile`` three times and reports, for each, the wall time and the longest
time the event loop was blocked (a 5 ms ticker measures how late it runs), and the longest
pause of Python's garbage collector. It does so twice: with the collector on, as in a hub
(with the objects made before the first reconciliation frozen, as ``freeze_gc_at_startup`` does),
and with it off, which shows how long the route manager's own steps block:

- cold: empty tables, every route is added (a hub starting with N running servers);
- warm: everything in place, nothing to change (the periodic run);
- churn: 1% of the servers stopped and as many new ones started;
- activity, first: the first collection of the ports' activity (``activity.py``): every
  direct route has a time (CHP sets one when a route is added), so all N servers are written;
- activity: a tenth of the servers had a request on each port since (through CHP, to the
  sidecar and to the app), and the collection moves those forward.

The servers are stand-ins (name, address, ready) over real rows of JupyterHub's database
(``jupyterhub.orm``, sqlite): the hub's own objects need a hub. All run on 127.0.0.1, where
one small app answers every server's public port. Each has one protected port (CHP ->
sidecar; mode allow_all) and one public port (CHP -> app): 2N CHP routes and N sidecar routes.
Results go to benchmarks/results/scale.json and scale.md, beside those of
``traefik_scale.py`` (the same steps behind Traefik's file, etcd and redis providers).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
from bench import CHP, HOST, RESULTS, free_port, wait_http
from jupyterhub import orm

from jhproxy_routes.activity import ActivityCollector
from jhproxy_routes.audit import AuditLog
from jhproxy_routes.config import PortRoutes
from jhproxy_routes.proxy import freeze_startup_objects
from jhproxy_routes.replicas import SidecarReplicas
from jhproxy_routes.routeapi import RouteAPI
from jhproxy_routes.routes import RouteManager
from jhproxy_routes.store import AccessStore

# seconds per pass (a first pass writes every server; later ones find little to do), and the
# longest the hub's event loop may be blocked, with the collector on
TARGETS = {
    "time_s": {"cold": 10.0, "warm": 1.0, "churn": 2.0, "activity, first": 10.0, "activity": 1.0},
    "block_ms": 50.0,
}


def fake_users(db, first: int, count: int) -> dict:
    """``count`` users with one ready server each (on 127.0.0.1), and their rows in ``db``."""
    rows = [orm.User(name=f"user{i:05d}") for i in range(first, first + count)]
    db.add_all(rows + [orm.Spawner(user=row, name="") for row in rows])
    db.commit()
    users = {}
    for row in rows:
        spawner = SimpleNamespace(
            name="", ready=True, pending=None, server=SimpleNamespace(host=f"http://{HOST}:8888"), port=8888
        )
        users[row.name] = SimpleNamespace(name=row.name, spawners={"": spawner}, orm_user=row)
    return users


class LoopWatch:
    """How late a ticker that wants to run every ``interval`` seconds runs: the longest block
    of the event loop, and the CPU time this process used meanwhile (all its threads): far
    less than the block means the process waited for a core (a busy machine), not for its own
    work. Python's garbage collector runs inside such blocks (a full, generation-2 collection
    walks every object of the process); its longest pause is recorded too."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self._task = None
        self._gc_start = 0.0

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.longest_gc = max(self.longest_gc, time.perf_counter() - self._gc_start)

    async def _tick(self):
        loop = asyncio.get_running_loop()
        while True:  # from __enter__ on: a block before the ticker first runs counts too
            await asyncio.sleep(self.interval)
            self._ticked(loop.time())

    def _ticked(self, now: float) -> None:
        cpu = time.process_time()
        if now - self._tick_start - self.interval > self.longest:
            self.longest, self.longest_cpu = now - self._tick_start - self.interval, cpu - self._tick_cpu
        self._tick_start, self._tick_cpu = now, cpu

    def __enter__(self):
        self.longest = self.longest_cpu = self.longest_gc = 0.0
        self._tick_start, self._tick_cpu = asyncio.get_running_loop().time(), time.process_time()
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.ensure_future(self._tick())
        return self

    def __exit__(self, *exc):
        # a block at the very end of the step: the ticker has not run since it began
        self._ticked(asyncio.get_running_loop().time())
        self._task.cancel()
        gc.callbacks.remove(self._on_gc)


async def measure(step, users: dict) -> dict:
    """Time and loop blocks of ``await step(users)`` (a reconciliation, a collection)."""
    await asyncio.sleep(0.05)  # the ticker's first tick
    with LoopWatch() as watch:
        start = time.perf_counter()
        await step(users)
        elapsed = time.perf_counter() - start
    return {
        "time_s": round(elapsed, 2),
        "block_ms": round(watch.longest * 1e3, 1),
        "block_cpu_ms": round(watch.longest_cpu * 1e3, 1),
        "gc_pause_ms": round(watch.longest_gc * 1e3, 1),
    }


async def call_ports(chp_url: str, names: list[str], ports: list[int]) -> None:
    """One request to each of these ports of these servers, through the proxy."""
    async with httpx.AsyncClient(base_url=chp_url, timeout=60, limits=httpx.Limits(max_connections=20)) as client:
        for i in range(0, len(names), 100):
            batch = [client.get(f"/ports/{name}/{port}/bytes?n=16") for name in names[i : i + 100] for port in ports]
            statuses = {r.status_code for r in await asyncio.gather(*batch)}
            if statuses != {200}:
                raise SystemExit(f"requests to the ports failed: {statuses}")


async def run(servers: int, tmp: Path) -> dict:
    chp_port, chp_api_port, sidecar_port = free_port(), free_port(), free_port()
    protected, public = free_port(), free_port()
    chp_token, sidecar_token = secrets.token_hex(16), secrets.token_hex(16)
    env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": chp_token, "JHPROXY_ROUTES_SIDECAR_TOKEN": sidecar_token}
    for key in [k for k in env if k.startswith("JUPYTERHUB_")]:
        env.pop(key)  # the sidecar runs without a hub: tokens only
    procs = [
        subprocess.Popen(
            [
                str(CHP),
                "--ip",
                HOST,
                "--port",
                str(chp_port),
                "--api-ip",
                HOST,
                "--api-port",
                str(chp_api_port),
                "--log-level",
                "warn",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "chp.log").open("w"),
        ),
        subprocess.Popen(
            [sys.executable, "-m", "jhproxy_routes.sidecar", "--ip", HOST, "--port", str(sidecar_port), "--log-level", "WARNING"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "sidecar.log").open("w"),
        ),
        *(
            subprocess.Popen(
                [sys.executable, str(Path(__file__).parent / "app.py"), "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=(tmp / f"app-{port}.log").open("w"),
            )
            for port in (protected, public)
        ),
    ]
    try:
        wait_http(f"http://{HOST}:{chp_api_port}/api/routes", 30, proc=procs[0])
        wait_http(f"http://{HOST}:{sidecar_port}/_jhproxy-routes/health", 30, proc=procs[1])
        for port in (protected, public):
            wait_http(f"http://{HOST}:{port}/bytes", 30)
        settings = PortRoutes(
            # a public port straight from CHP: without scope_cookies (on by default) it needs no sidecar
            ports=[protected, {"port": public, "access": "public", "scope_cookies": False}],
            sidecar_url=f"http://{HOST}:{sidecar_port}",
            sidecar_api_token=sidecar_token,
            db_url=f"sqlite:///{tmp / 'access.sqlite'}",
            default_startup_behavior="allow_all",
            allow_shared_host=True,
        )
        log = logging.getLogger("scale")
        chp = RouteAPI("proxy", f"http://{HOST}:{chp_api_port}", chp_token, concurrency=settings.concurrency, log=log)
        manager = RouteManager(
            settings,
            "/",
            chp,
            log,
            store=AccessStore(settings.db_url),
            audit=AuditLog(settings.audit_log_path),
            sidecar=SidecarReplicas.from_settings(settings, log),
        )
        db = orm.new_session_factory(f"sqlite:///{tmp / 'jupyterhub.sqlite'}")()
        users = fake_users(db, 0, servers)
        freeze_startup_objects()  # as the hub does at its first check_routes (freeze_gc_at_startup)
        results = {"cold": await measure(manager.reconcile, users)}
        chp_routes, sidecar_routes = await asyncio.gather(manager.proxy_table.get_all(), manager.sidecar.get_all())
        if len(chp_routes) != 2 * servers or len(sidecar_routes) != servers:
            raise SystemExit(f"cold reconcile left {len(chp_routes)} CHP and {len(sidecar_routes)} sidecar routes")
        del chp_routes, sidecar_routes  # not kept alive through the next runs (the collector would walk them)
        results["warm"] = await measure(manager.reconcile, users)
        churn = max(1, servers // 100)
        for name in list(users)[:churn]:
            del users[name]
        users.update(fake_users(db, servers, churn))
        results["churn"] = await measure(manager.reconcile, users)
        activity = ActivityCollector(manager, lambda: db, log)
        results["activity, first"] = await measure(activity.collect, users)
        before = {name: user.orm_user.orm_spawners[""].last_activity for name, user in users.items()}
        active = list(users)[::10]  # a tenth of the servers
        await call_ports(f"http://{HOST}:{chp_port}", active, [protected, public])
        await asyncio.sleep(0.01)
        results["activity"] = await measure(activity.collect, users)
        moved = [name for name, user in users.items() if user.orm_user.orm_spawners[""].last_activity != before[name]]
        if sorted(moved) != sorted(active):
            raise SystemExit(f"the collection moved {len(moved)} servers, not the {len(active)} with traffic")
        chp_routes = await manager.proxy_table.get_all()
        if len(chp_routes) != 2 * servers or not any("user" + f"{servers:05d}" in r for r in chp_routes):
            raise SystemExit("the churn reconcile did not leave the expected routes")
        await asyncio.gather(manager.proxy_table.aclose(), manager.sidecar.aclose())
        return results
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def busy() -> str:
    """The machine's load: load average, and the share of time tasks waited for a core (PSI)."""
    try:
        pressure = open("/proc/pressure/cpu").read().split()[2].split("=")[1] + "%"
    except (OSError, IndexError):
        pressure = "n/a"
    return f"load average {os.getloadavg()[0]:.1f}, CPU pressure {pressure}"


def report(servers: int, results: dict, load: tuple[str, str]) -> str:
    """Both passes as one markdown table: with Python's garbage collector as a hub runs it,
    and with the collector off (what the route manager's own steps block)."""
    lines = [
        f"{time.strftime('%Y-%m-%d')}: route manager, {servers} servers x 2 ports ({2 * servers} CHP routes,"
        f" {servers} sidecar routes);"
        f" {platform.processor() or platform.machine()}, {os.cpu_count()} cores ({load[0]} before; {load[1]} after:"
        f" the share of the last minute in which tasks waited for a core), Python {platform.python_version()}.",
        "",
        "| garbage collector | reconcile | time | target | longest loop block (process CPU in it) | target"
        " | longest collection |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for collector, runs in results.items():
        for run, r in runs.items():
            time_target = TARGETS["time_s"][run]
            ok_time = "ok" if r["time_s"] <= time_target else "MISSED"
            ok_block = "ok" if r["block_ms"] <= TARGETS["block_ms"] else "MISSED"
            lines.append(
                f"| {collector} | {run} | {r['time_s']:.2f} s | <= {time_target:g} s ({ok_time}) |"
                f" {r['block_ms']:.1f} ms ({r['block_cpu_ms']:.0f} ms) | <= {TARGETS['block_ms']:g} ms ({ok_block}) |"
                f" {r['gc_pause_ms']:.1f} ms |"
            )
    return "\n".join(lines) + "\n"


SECTIONS = {
    "chp": "## configurable-http-proxy (`scale.py`)",
    "traefik": "## Traefik's file provider (`traefik_scale.py`)",
    "traefik-etcd": "## Traefik's etcd provider (`traefik_scale.py --provider etcd`)",
    "traefik-redis": "## Traefik's redis provider (`traefik_scale.py --provider redis`)",
}


def save_results(key: str, markdown: str, data: dict) -> None:
    """One script's part of results/scale.md (its own section; the other's kept) and of
    scale.json (CHP's run at the top, Traefik's under ``traefik``, ``traefik-etcd``, ``traefik-redis``)."""
    md, js = RESULTS / "scale.md", RESULTS / "scale.json"
    RESULTS.mkdir(exist_ok=True)
    old = md.read_text() if md.exists() else ""
    parts = dict(re.findall(r"^(## [^\n]*)\n\n(.*?)(?=^## |\Z)", old, re.M | re.S)) if old.startswith("## ") else {}
    if old and not parts:
        parts[SECTIONS["chp"]] = old  # from before the sections
    parts[SECTIONS[key]] = markdown
    md.write_text("\n".join(f"{h}\n\n{parts[h].strip()}\n" for h in SECTIONS.values() if h in parts))
    stored = json.loads(js.read_text()) if js.exists() else {}
    stored = {**data, **{k: v for k, v in stored.items() if k.startswith("traefik")}} if key == "chp" else {**stored, key: data}
    js.write_text(json.dumps(stored, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=10000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results, before = {}, busy()
    for collector in ("on", "off"):
        if collector == "off":
            gc.disable()
        with tempfile.TemporaryDirectory() as tmp:
            results[collector] = asyncio.run(run(args.servers, Path(tmp)))
        gc.enable()
        gc.unfreeze()
        gc.collect()
    table = report(args.servers, results, (before, busy()))
    save_results("chp", table, {"servers": args.servers, "targets": TARGETS, **results})
    print(table)


if __name__ == "__main__":
    main()
