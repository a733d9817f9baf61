"""The route manager at scale: reconcile N servers x 2 ports against a real CHP and sidecar.

``python benchmarks/scale.py [--servers 10000]`` (through ``bash benchmarks/run.sh --scale``)
starts configurable-http-proxy and the sidecar on 127.0.0.1, then runs the hub's
``RouteManager.reconcile`` three times and reports, for each, the wall time and the longest
time the event loop was blocked (a 5 ms ticker measures how late it runs), and the longest
pause of Python's garbage collector. It does so twice: with the collector on, as in a hub,
and with it off, which shows how long the route manager's own steps block:

- cold: empty tables, every route is added (a hub starting with N running servers);
- warm: everything in place, nothing to change (the periodic run);
- churn: 1% of the servers stopped and as many new ones started.

The servers are stand-ins (name, address, ready): the hub's own objects need a hub. Each has
one protected port (CHP -> sidecar) and one public port (CHP -> app): 2N CHP routes and N
sidecar routes. Results go to benchmarks/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from bench import CHP, HOST, RESULTS, free_port, wait_http

from jhproxy_routes.config import PortRoutes
from jhproxy_routes.routeapi import RouteAPI
from jhproxy_routes.routes import RouteManager

TARGETS = {"time_s": 10.0, "block_ms": 50.0}


def fake_users(first: int, count: int) -> dict:
    """``count`` users with one ready server each, at addresses of their own."""
    users = {}
    for i in range(first, first + count):
        name = f"user{i:05d}"
        server = SimpleNamespace(host=f"http://10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:8888")
        spawner = SimpleNamespace(name="", ready=True, pending=None, server=server, port=8888)
        users[name] = SimpleNamespace(name=name, spawners={"": spawner})
    return users


class LoopWatch:
    """How late a ticker that wants to run every ``interval`` seconds runs: the longest block
    of the event loop. Python's garbage collector runs inside such blocks (a full, generation-2
    collection walks every object of the process); its longest pause is recorded too."""

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
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.longest = max(self.longest, loop.time() - start - self.interval)

    def __enter__(self):
        self.longest = self.longest_gc = 0.0
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.ensure_future(self._tick())
        return self

    def __exit__(self, *exc):
        self._task.cancel()
        gc.callbacks.remove(self._on_gc)


async def measure(manager: RouteManager, users: dict) -> dict:
    await asyncio.sleep(0.05)  # the ticker's first tick
    with LoopWatch() as watch:
        start = time.perf_counter()
        await manager.reconcile(users)
        elapsed = time.perf_counter() - start
    return {
        "time_s": round(elapsed, 2),
        "block_ms": round(watch.longest * 1e3, 1),
        "gc_pause_ms": round(watch.longest_gc * 1e3, 1),
    }


async def run(servers: int, tmp: Path) -> dict:
    chp_port, chp_api_port, sidecar_port = free_port(), free_port(), free_port()
    chp_token, sidecar_token = secrets.token_hex(16), secrets.token_hex(16)
    env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": chp_token, "JHPROXY_ROUTES_SIDECAR_TOKEN": sidecar_token}
    for key in [k for k in env if k.startswith("JUPYTERHUB_")]:
        env.pop(key)  # the sidecar runs without a hub: tokens only
    procs = [
        subprocess.Popen(
            [str(CHP), "--ip", HOST, "--port", str(chp_port), "--api-ip", HOST, "--api-port", str(chp_api_port),
             "--log-level", "warn"],
            env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "chp.log").open("w"),
        ),
        subprocess.Popen(
            [sys.executable, "-m", "jhproxy_routes.sidecar", "--ip", HOST, "--port", str(sidecar_port),
             "--log-level", "WARNING"],
            env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "sidecar.log").open("w"),
        ),
    ]  # fmt: skip
    try:
        wait_http(f"http://{HOST}:{chp_api_port}/api/routes", 30, proc=procs[0])
        wait_http(f"http://{HOST}:{sidecar_port}/_jhproxy-routes/health", 30, proc=procs[1])
        settings = PortRoutes(
            ports=[5000, {"port": 8050, "access": "public"}],
            sidecar_url=f"http://{HOST}:{sidecar_port}",
            sidecar_api_token=sidecar_token,
            db_url=f"sqlite:///{tmp / 'access.sqlite'}",
        )
        log = logging.getLogger("scale")
        chp = RouteAPI("proxy", f"http://{HOST}:{chp_api_port}", chp_token, concurrency=settings.concurrency, log=log)
        manager = RouteManager(settings, "/", chp, log)
        users = fake_users(0, servers)
        results = {"cold": await measure(manager, users)}
        chp_routes, sidecar_routes = await asyncio.gather(manager.chp.get_all(), manager.sidecar.get_all())
        if len(chp_routes) != 2 * servers or len(sidecar_routes) != servers:
            raise SystemExit(f"cold reconcile left {len(chp_routes)} CHP and {len(sidecar_routes)} sidecar routes")
        del chp_routes, sidecar_routes  # not kept alive through the next runs (the collector would walk them)
        results["warm"] = await measure(manager, users)
        churn = max(1, servers // 100)
        for name in list(users)[:churn]:
            del users[name]
        users.update(fake_users(servers, churn))
        results["churn"] = await measure(manager, users)
        chp_routes = await manager.chp.get_all()
        if len(chp_routes) != 2 * servers or not any("user" + f"{servers:05d}" in r for r in chp_routes):
            raise SystemExit("the churn reconcile did not leave the expected routes")
        await asyncio.gather(manager.chp.aclose(), manager.sidecar.aclose())
        return results
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def report(servers: int, results: dict) -> str:
    """Both passes as one markdown table: with Python's garbage collector as a hub runs it,
    and with the collector off (what the route manager's own steps block)."""
    lines = [
        f"Route manager, {servers} servers x 2 ports ({2 * servers} CHP routes, {servers} sidecar routes);"
        f" {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
        "",
        "| garbage collector | reconcile | time | target | longest loop block | target | longest collection |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for collector, runs in results.items():
        for run, r in runs.items():
            ok_time = "ok" if r["time_s"] <= TARGETS["time_s"] else "MISSED"
            ok_block = "ok" if r["block_ms"] <= TARGETS["block_ms"] else "MISSED"
            lines.append(
                f"| {collector} | {run} | {r['time_s']:.2f} s | <= {TARGETS['time_s']:g} s ({ok_time}) |"
                f" {r['block_ms']:.1f} ms | <= {TARGETS['block_ms']:g} ms ({ok_block}) | {r['gc_pause_ms']:.1f} ms |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=10000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for collector in ("on", "off"):
        if collector == "off":
            gc.disable()
        with tempfile.TemporaryDirectory() as tmp:
            results[collector] = asyncio.run(run(args.servers, Path(tmp)))
        gc.enable()
        gc.collect()
    table = report(args.servers, results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({"servers": args.servers, "targets": TARGETS, **results}, indent=1))
    (RESULTS / "scale.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
