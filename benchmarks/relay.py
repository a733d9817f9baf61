"""The in-server part's loopback relay (``jhproxy_routes.singleuser.relay``) against an app
on the server's own address, side by side in one run.

    .venv/bin/python benchmarks/relay.py [--quick] [--json benchmarks/results/relay.json]

Two copies of the benchmark app (``app.py``): one listens on this machine's own address
(the first of ``own_addresses()``, as an app started with ``--host 0.0.0.0`` is reached in a
container), one on 127.0.0.1 only, reached through the relay, which runs in a process of its
own (as in the Jupyter server) and listens on the own address at the app's port. Each is
measured through a route of configurable-http-proxy (``route``: what a port's visitor gets;
the goal is on these rows) and bare (``bare``: the client straight at the address, the
relay's whole cost). The reference for what any extra hop costs here: nginx's TCP proxy
(``stream``, one process, written in C, checking nothing) in the relay's place, in front of
the same loopback app (``nginx``). Rows are interleaved, in a new order each round; the median of the
rounds is kept:

- 1 KiB GETs with ``wrk -t1`` at 1 and 50 connections: req/s, p50, p99;
- 64 MiB downloaded and uploaded (median of 5 each): MB/s;
- CPU time the relay's process used per 1 KiB request (bare, 50 connections).

Goal: the relayed app at >= 0.9x the one on the server's address, for every figure of the route.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CHP, HOST, WRK_LUA, MiB, api, cpu_ticks, download, free_port, upload, wait_http, wrk

from jhproxy_routes.interfaces import own_addresses

HERE = Path(__file__).resolve().parent
GOAL = 0.9
FIGURES = {
    "rps@1": "1 KiB GETs, 1 connection (req/s)",
    "rps@50": "1 KiB GETs, 50 connections (req/s)",
    "download_MBps": "64 MiB download (MB/s)",
    "upload_MBps": "64 MiB upload (MB/s)",
}
RELAY_MAIN = """
import asyncio, sys
from jhproxy_routes.singleuser.relay import LoopbackRelay

async def main(port, address):
    relay = LoopbackRelay()
    relayed = await relay.want({port: "127.0.0.1"}, [address])
    assert relayed == {port}, relayed
    print("relaying", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


def start_app(port: int, ip: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(HERE / "app.py"), "--port", str(port), "--ip", ip])
    wait_http(f"http://{ip}:{port}/x/bytes?n=1", 15, proc=proc)
    return proc


def start_relay(port: int, address: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", RELAY_MAIN, str(port), address], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "relaying":
        raise RuntimeError("the relay did not start")
    return proc


NGINX_STREAM = """
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
stream {{ server {{ listen {own}:{port}; proxy_pass 127.0.0.1:{app}; }} }}
"""


def start_nginx(own: str, port: int, app: int) -> subprocess.Popen:
    """nginx's TCP proxy on ``own:port`` in front of the app on 127.0.0.1:``app``."""
    tmp = Path(tempfile.mkdtemp(prefix="jhproxy-relay-nginx-"))
    (tmp / "nginx.conf").write_text(NGINX_STREAM.format(tmp=tmp, own=own, port=port, app=app))
    proc = subprocess.Popen(["nginx", "-e", str(tmp / "nginx-error.log"), "-c", str(tmp / "nginx.conf")])
    wait_http(f"http://{own}:{port}/x/bytes?n=1", 15, proc=proc)
    return proc


def start_chp(port: int, api_port: int, token: str) -> subprocess.Popen:
    command = [str(CHP), "--ip", HOST, "--port", str(port), "--api-ip", HOST, "--api-port", str(api_port), "--log-level", "warn"]
    proc = subprocess.Popen(command, env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token})
    wait_http(f"http://{HOST}:{api_port}/api/routes", 20, headers={"Authorization": f"token {token}"}, proc=proc)
    return proc


def measure(rows: dict[str, tuple[str, int, str]], relay_pid: int, quick: bool) -> dict:
    """``rows``: name -> (host, port, path prefix), named ``<route|bare> <direct|relayed>``."""
    lua = Path(tempfile.mkdtemp()) / "report.lua"
    lua.write_text(WRK_LUA)
    rounds, seconds, big = (1, 2, 3) if quick else (3, 5, 5)
    results: dict[str, dict[str, list]] = {name: {} for name in rows}
    names = list(rows)
    for host, port, prefix in rows.values():  # warm-up
        wrk(f"http://{host}:{port}{prefix}/bytes?n=1024", {}, 50, 1, lua)
    relay_cpu = []
    for round_ in range(rounds):
        order = names[round_:] + names[:round_]
        for conns in (1, 50):
            for name in order:
                host, port, prefix = rows[name]
                ticks = cpu_ticks(relay_pid)
                result = wrk(f"http://{host}:{port}{prefix}/bytes?n=1024", {}, conns, seconds, lua)
                if result["errors"]:
                    raise RuntimeError(f"{name}: {result['errors']} errors")
                for key in ("rps", "p50_ms", "p99_ms"):
                    results[name].setdefault(f"{key}@{conns}", []).append(result[key])
                if name == "bare relayed" and conns == 50:
                    used = (cpu_ticks(relay_pid) - ticks) / os.sysconf("SC_CLK_TCK")
                    relay_cpu.append(used / (result["rps"] * seconds) * 1e6)
    for _ in range(big):
        for name in names:
            host, port, prefix = rows[name]
            results[name].setdefault("download_MBps", []).append(download(port, prefix, {}, 64 * MiB, 60, host))
            results[name].setdefault("upload_MBps", []).append(upload(port, prefix, {}, 64 * MiB, 60, host))
    medians = {name: {key: statistics.median(values) for key, values in figures.items()} for name, figures in results.items()}
    ratios = {
        f"{kind} {hop}": {key: medians[f"{kind} {hop}"][key] / medians[f"{kind} direct"][key] for key in FIGURES}
        for kind in ("route", "bare")
        for hop in ("relayed", "nginx")
    }
    return {
        "rows": medians,
        "ratios": ratios,
        "relay_cpu_us_per_request": statistics.median(relay_cpu),
        "goal": GOAL,
        "met": all(r >= GOAL for r in ratios["route relayed"].values()),
    }


def markdown(data: dict) -> str:
    rows, ratios = data["rows"], data["ratios"]
    lines = [
        "| figure | route: app on the server's address | route: relayed | ratio | route: nginx hop (reference) | ratio"
        " | bare: app on the address | bare: relayed | ratio | bare: nginx hop | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in FIGURES.items():
        cells = []
        for kind in ("route", "bare"):
            cells.append(f"{rows[f'{kind} direct'][key]:.0f}")
            for hop in ("relayed", "nginx"):
                cells += [f"{rows[f'{kind} {hop}'][key]:.0f}", f"{ratios[f'{kind} {hop}'][key]:.2f}x"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label in (("p50_ms@50", "p50 at 50 connections (ms)"), ("p99_ms@50", "p99 at 50 connections (ms)")):
        cells = []
        for kind in ("route", "bare"):
            cells.append(f"{rows[f'{kind} direct'][key]:.2f}")
            for hop in ("relayed", "nginx"):
                cells += [f"{rows[f'{kind} {hop}'][key]:.2f}", ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\nRelay CPU per 1 KiB request (bare, 50 connections): {data['relay_cpu_us_per_request']:.0f} µs.")
    lines.append(f"Goal >= {GOAL}x on every ratio of the relayed route: {'met' if data['met'] else 'NOT met'}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, 3 transfers each")
    parser.add_argument("--json", type=Path, help="write the results here too (and the table beside it, .md)")
    args = parser.parse_args()
    addresses = [a for a in own_addresses() if ":" not in a]
    if not addresses:
        sys.exit("relay benchmark: this machine has no IPv4 address but loopback")
    own = addresses[0]
    direct_port, relayed_port, nginx_port, chp_port, chp_api = (free_port() for _ in range(5))
    chp_token = secrets.token_hex(16)
    procs = []
    try:
        procs.append(start_app(direct_port, own))
        procs.append(start_app(relayed_port, "127.0.0.1"))
        relay = start_relay(relayed_port, own)
        procs.append(relay)
        procs.append(start_nginx(own, nginx_port, relayed_port))
        procs.append(start_chp(chp_port, chp_api, chp_token))
        for name, port in (("direct", direct_port), ("relayed", relayed_port), ("nginx", nginx_port)):
            api(f"http://{HOST}:{chp_api}/api/routes/{name}", chp_token, {"target": f"http://{own}:{port}"})
        rows = {
            "route direct": (HOST, chp_port, "/direct"),
            "route relayed": (HOST, chp_port, "/relayed"),
            "route nginx": (HOST, chp_port, "/nginx"),
            "bare direct": (own, direct_port, "/x"),
            "bare relayed": (own, relayed_port, "/x"),
            "bare nginx": (own, nginx_port, "/x"),
        }
        time.sleep(0.5)
        data = measure(rows, relay.pid, args.quick)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    data["address"] = own
    data["date"] = time.strftime("%Y-%m-%d")
    data["load_average_after"] = os.getloadavg()
    table = markdown(data)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        heading = f"# The loopback relay against an app on the server's address ({data['date']})\n\n"
        note = f"\n\nLoad average of the machine after the run: {', '.join(f'{x:.2f}' for x in data['load_average_after'])} (2 cores).\n"
        args.json.with_suffix(".md").write_text(heading + table + note)


if __name__ == "__main__":
    main()
