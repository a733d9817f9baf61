"""Traffic on a port is its server's activity: the real jupyterhub-idle-culler, as a hub
service, keeps servers whose ports are in use and culls the others.

One hub, one user per case, all at once: traffic runs for more than twice the culler's
timeout, then stops for some. Kept alive: a protected port called with its token, a public
port (a direct route, the proxy's activity), a websocket that only exchanges messages.
Culled while traffic goes on: a public and a protected port with ``activity: False``, a
steady storm of wrong tokens, and requests with the token to a port where no app listens.
"""

import asyncio
import itertools
import re
import sys
import time
from datetime import datetime, timezone

import httpx
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.rig import ADMIN_TOKEN, free_port, wait_for

TIMEOUT = 15  # the culler's --timeout
EVERY = 2  # seconds between two requests of a client that keeps its server alive
KEEP_FOR = 2.2 * TIMEOUT  # traffic time before the first check


def culler_config() -> str:
    return f"""
c.JupyterHub.last_activity_interval = 2
c.JupyterHub.services = c.JupyterHub.services + [{{
    "name": "idle-culler",
    "command": [{sys.executable!r}, "-m", "jupyterhub_idle_culler", "--timeout={TIMEOUT}", "--cull-every=2"],
}}]
c.JupyterHub.load_roles = c.JupyterHub.load_roles + [{{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}}]
"""


def server_model(hub, user: str) -> dict | None:
    return hub.api("GET", f"/users/{user}").json()["servers"].get("")


def last_activity(hub, user: str) -> float:
    stamp = server_model(hub, user)["last_activity"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


async def keep_calling(url: str, stop: asyncio.Event, headers: dict, every: float = EVERY) -> list[int]:
    """GET ``url`` every ``every`` seconds until ``stop``; the statuses seen."""
    statuses = []
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            statuses.append((await client.get(url, headers=headers)).status_code)
            try:
                await asyncio.wait_for(stop.wait(), every)
            except asyncio.TimeoutError:
                pass
    return statuses


async def keep_talking(url: str, stop: asyncio.Event, token: str) -> int:
    """A websocket that exchanges a message every EVERY seconds until ``stop``: the echoes."""
    conn = await websocket_connect(HTTPRequest(url, headers={"X-Proxy-Token": token}))
    echoes = 0
    try:
        while not stop.is_set():
            conn.write_message(f"still here {echoes}")
            assert (await conn.read_message()) == f"still here {echoes}"
            echoes += 1
            try:
                await asyncio.wait_for(stop.wait(), EVERY)
            except asyncio.TimeoutError:
                pass
    finally:
        conn.close()
    return echoes


async def test_port_traffic_keeps_servers_from_the_idle_culler(make_hub, make_app):
    apps = {name: make_app() for name in ("token", "public", "quiet_public", "quiet_token")}
    nothing_there = free_port()  # allowed, but no app listens: the sidecar answers 502
    ports = [
        apps["token"].port,
        nothing_there,
        {"port": apps["public"].port, "access": "public", "scope_cookies": False},
        {"port": apps["quiet_public"].port, "access": "public", "activity": False, "scope_cookies": False},
        {"port": apps["quiet_token"].port, "activity": False},
    ]
    hub = make_hub(ports, culler_config())
    assert "objects of the hub's start-up left to reference counting" in hub.log()  # freeze_gc_at_startup

    def url(user: str, app: str, path: str = "/ping") -> str:
        return f"{hub.url}/ports/{user}/{apps[app].port}{path}"

    keep, others = asyncio.Event(), asyncio.Event()
    traffic = {
        "by-token": lambda token: keep_calling(url("by-token", "token"), keep, {"X-Proxy-Token": token}),
        "by-public": lambda token: keep_calling(url("by-public", "public"), keep, {}),
        "by-socket": lambda token: keep_talking(url("by-socket", "token", "/ws").replace("http://", "ws://"), keep, token),
        "quiet-public": lambda token: keep_calling(url("quiet-public", "quiet_public"), others, {}),
        "quiet-token": lambda token: keep_calling(url("quiet-token", "quiet_token"), others, {"X-Proxy-Token": token}),
        "storm": lambda token: keep_calling(url("storm", "token"), others, {"X-Proxy-Token": "wrong"}, every=0.2),
        "no-app": lambda token: keep_calling(f"{hub.url}/ports/no-app/{nothing_there}/ping", others, {"X-Proxy-Token": token}),
    }
    users = list(traffic)
    tasks = {}

    def start(user: str) -> str:
        """Spawn the user's server; its port token, once its port routes are in the proxy."""
        api_token = hub.user_token(user)
        hub.spawn(user)
        token = hub.proxytoken(api_token, "POST", content="random").json()
        wait_for(
            lambda: sum(path.startswith(f"/ports/{user}/") for path in hub.port_routes()) == len(ports), 10, f"{user}'s routes"
        )
        return token

    for user, work in traffic.items():  # each server's traffic begins as soon as it runs: spawns take a while
        tasks[user] = asyncio.ensure_future(work(await asyncio.to_thread(start, user)))
    try:
        await asyncio.sleep(KEEP_FOR)
        running = {user: server_model(hub, user) is not None for user in users}
        assert running == {
            "by-token": True,
            "by-public": True,
            "by-socket": True,
            "quiet-public": False,
            "quiet-token": False,
            "storm": False,
            "no-app": False,
        }, hub.log()[-3000:]
        for user in ("by-token", "by-public", "by-socket"):  # the hub saw the traffic
            assert last_activity(hub, user) > time.time() - 4 * EVERY - 2, user
        metrics = hub.get("/hub/metrics", headers={"Authorization": f"token {ADMIN_TOKEN}"}).text
        for source in ("proxy", "sidecar"):
            updates = re.search(rf'jhproxy_routes_activity_updates_total{{source="{source}"}} ([0-9.]+)', metrics)
            assert updates and float(updates[1]) >= KEEP_FOR / EVERY / 2, (source, updates)
        pending = re.search(r"^jhproxy_routes_activity_pending_seconds ([0-9.e+-]+)$", metrics, re.M)
        assert pending and float(pending[1]) < 3 * EVERY, pending
    finally:
        keep.set(), others.set()
        results = {user: await task for user, task in tasks.items()}
    # what the clients saw: every port let them through, except the storm's wrong tokens
    for user in ("by-token", "by-public", "quiet-token"):
        assert set(results[user][:5]) == {200}, (user, results[user])
    assert set(results["no-app"][:5]) == {502}, results["no-app"]
    # until culled (then its route is gone, and the hub answers 302)
    storm = list(itertools.takewhile(lambda status: status != 302, results["storm"]))
    assert len(storm) >= 15 and set(storm) == {403, 429}, results["storm"]
    assert results["by-socket"] >= KEEP_FOR / EVERY - 2
    # the traffic stopped: now the culler takes them too
    stopped = time.time()
    wait_for(
        lambda: all(server_model(hub, user) is None for user in ("by-token", "by-public", "by-socket")),
        TIMEOUT + 30,
        "the culler to stop the servers whose traffic ended",
        hub.log_path,
        interval=1,
    )
    assert time.time() - stopped >= TIMEOUT - 2 * EVERY - 2  # not before their last activity aged


def test_a_replica_answer_cannot_push_activity_into_the_future():
    """What a sidecar replica answers is moved to the hub's clock and never later than now;
    entries that are not [user, server, finite time] are skipped, not fatal."""
    from jhproxy_routes.activity import ActivityCollector

    now = time.time()
    seen = {}
    answer = {
        "now": now - 100,
        "servers": [
            ["alice", "", now - 110],  # 10 s before the replica's now: 10 s before the hub's
            ["bob", "", 1e11],  # year 5138
            ["carl", "", float("nan")],
            ["dana", ""],
            "eve",
            [None, "", now],
            ["fay", 3, now],
        ],
    }
    ActivityCollector._from_sidecar(seen, answer)
    assert set(seen) == {("alice", ""), ("bob", "")}
    assert abs(seen["alice", ""][0] - (now - 10)) < 1
    assert seen["bob", ""][0] <= time.time()
