"""What one look-up in the kernel's socket tables costs (``jhproxy_routes.procnet``), on a
machine with ``--sockets`` TCP sockets open (default 1,000: half connected, half accepted).

``.venv/bin/python benchmarks/procnet.py [--sockets N] [--rounds N]``: opens the sockets,
then times the sidecar's check of a new connection (``accepted_uid``, asked of the kernel;
``accepted_uid_in_tables``, its fallback: the row found in ``tcp``, and for a dual-stack
listener in ``tcp6`` after ``tcp``), the port finder's ``listening()`` and the server
extension's whole scan (``singleuser.listeners``: with each listener's process), a bare read of each
table, and what a new connection to an app costs the sidecar's pool with the check and
without; prints the median and the 90th percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import time

from jhproxy_routes import procnet
from jhproxy_routes.sidecar.relay import UpstreamPool
from jhproxy_routes.singleuser.listeners import listeners


def timed(work, rounds: int) -> tuple[float, float]:
    """Median and 90th percentile of ``work()``, in milliseconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), statistics.quantiles(times, n=10)[-1]


async def connections(address: tuple, rounds: int) -> tuple[float, float]:
    """Median and 90th percentile of opening one connection to ``address`` (host, port,
    uid) through the sidecar's pool, in milliseconds."""
    pool, times = UpstreamPool(), []
    for _ in range(rounds):
        start = time.perf_counter()
        conn = await pool.connect(address)
        times.append((time.perf_counter() - start) * 1e3)
        conn.close()
    return statistics.median(times), statistics.quantiles(times, n=10)[-1]


def read(path: str) -> None:
    with open(path) as table:
        table.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.sockets + 256)), hard))

    # every connection of the pool's rounds stays in the listen queue, unaccepted
    server = socket.create_server(("127.0.0.1", 0), backlog=2 * args.rounds + 16)
    dual = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    opened = []
    for _ in range(args.sockets // 2):  # each connection and its accepted end
        opened += [socket.create_connection(server.getsockname()), server.accept()[0]]
    four = socket.create_connection(server.getsockname())
    mapped = socket.create_connection(("127.0.0.1", dual.getsockname()[1]))
    rows = sum(1 for _ in procnet.sockets())
    known: dict[int, tuple] = {}
    listeners(os.geteuid(), known=known)
    cpu_start = time.process_time()
    for _ in range(args.rounds):
        listeners(os.geteuid(), known=known)
    scan_cpu = (time.process_time() - cpu_start) / args.rounds * 1e3

    lookups = {
        f"{lookup.__name__}, {listener}": timed(lambda lookup=lookup, c=c: lookup(c.getsockname(), c.getpeername()), args.rounds)
        for lookup in (procnet.accepted_uid, procnet.accepted_uid_in_tables)
        for listener, c in (("IPv4 listener", four), ("dual-stack listener", mapped))
    }
    results = {
        **lookups,
        "listening() (both tables parsed)": timed(procnet.listening, args.rounds),
        # the server extension's one scan: this user's listeners with their processes
        "one scan of the server extension (listeners()), every socket new": timed(lambda: listeners(os.geteuid()), args.rounds),
        # what the in-server part's watch does every second: the processes of known sockets are remembered
        "a scan again, no new socket (the watch's every second)": timed(
            lambda: listeners(os.geteuid(), known=known), args.rounds
        ),
        **{f"read {path} alone": timed(lambda path=path: read(path), args.rounds) for path in procnet.TABLES},
        "a new connection through the pool, unchecked": asyncio.run(connections((*server.getsockname(), None), args.rounds)),
        "a new connection through the pool, checked": asyncio.run(
            connections((*server.getsockname(), os.geteuid()), args.rounds)
        ),
    }
    print(f"{rows} TCP sockets in this network namespace ({args.sockets} opened here), {args.rounds} rounds each")
    for what, (median, p90) in results.items():
        print(f"  {what}: median {median:.3f} ms, p90 {p90:.3f} ms")
    print(f"  CPU of the watch's scan: {scan_cpu:.3f} ms each, {scan_cpu / 10:.2f}% of one core at one scan a second")
    for sock in [*opened, four, mapped, server, dual]:
        sock.close()


if __name__ == "__main__":
    main()
