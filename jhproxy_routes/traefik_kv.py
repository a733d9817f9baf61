"""The port routes in Traefik's key-value providers: jupyterhub-traefik-proxy's etcd and redis
proxies (``c.JupyterHub.proxy_class = "traefik_etcd"`` or ``"traefik_redis"``).

``install(c)`` sets ``TraefikEtcdPortRoutesProxy`` or ``TraefikRedisPortRoutesProxy``: the
hub's own class with ``TraefikPortRoutes``, configured by the same ``c.TraefikProxy``,
``c.TraefikEtcdProxy`` and ``c.TraefikRedisProxy`` settings. Their route table,
``TraefikKVRouteTable``, uses only the three calls every jupyterhub-traefik-proxy key-value
store has (set keys atomically, delete keys atomically, read a tree), so it is one table for
both stores. In the store, per route:

- its router and service under the proxy's ``kv_traefik_prefix`` (``traefik/http/routers/…``,
  ``traefik/http/services/…``), as jupyterhub-traefik-proxy writes the hub's own routes
  (``_dynamic_config_for_route``: the same names, rule and options), which Traefik reads;
- our record of it, one key: ``<kv_jupyterhub_prefix>-jhproxy-routes/routes/<router name>``
  = JSON ``{"routespec", "data"}`` (``data`` with its ``target``). Outside the hub's prefix,
  so the hub's ``get_all_routes`` never shows it to the hub's route check, which would delete
  it; JSON keeps the data's types, which the store's flat strings would not. Beside the
  records, ``…-jhproxy-routes/format`` = ``1`` (written once): the tree read is never empty.

A route's keys are set in one transaction, and so are its deletions: Traefik never sees a
router without its service. Routes go to the store a few per transaction (etcd refuses more
than 128 operations in one, ``--max-txn-ops``), and a route deleted is deleted by its exact
keys (jupyterhub-traefik-proxy deletes the hub's by tree: a scan of the whole store per route
on redis). Adding waits until Traefik serves the last route added, as on the file provider.

Redis tells Traefik of changes only with keyspace notifications on (``notify-keyspace-events
KEA``); Traefik's etcd provider watches. ``traefik_consul`` is refused: jupyterhub-traefik-proxy
deprecates it (its client library is unmaintained), and no Consul server could be tested.
"""

from __future__ import annotations

import json

from jupyterhub_traefik_proxy.etcd import TraefikEtcdProxy
from jupyterhub_traefik_proxy.kv_proxy import TKvProxy
from jupyterhub_traefik_proxy.redis import TraefikRedisProxy
from jupyterhub_traefik_proxy.traefik_utils import generate_alias
from traitlets import default, validate

from .logsafe import shown
from .routeapi import ROUTE_TAG, RouteAPIError
from .traefik import TraefikPortRoutes, unsafe, until_served

__all__ = ["TraefikEtcdPortRoutesProxy", "TraefikKVRouteTable", "TraefikRedisPortRoutesProxy"]

MAX_KEYS_PER_CALL = 120  # below etcd's default limit of 128 operations in one transaction
#: the etcd client's gRPC options: a read of many routes is one message, and gRPC's default
#: limit, 4 MiB, is about 10,000 of our records (the hub's own records of as many routes, more)
ETCD_GRPC_OPTIONS = [("grpc.max_receive_message_length", 1 << 30)]
RECORDS = "jhproxy-routes"  # our records' prefix: "<kv_jupyterhub_prefix>-jhproxy-routes"
FORMAT = "1"  # of the records


def store_error(e: Exception) -> str:
    """A store client's error in one line (gRPC's own text is several, with a debug string)."""
    details = getattr(e, "details", None)
    return f"{type(e).__name__}: {shown(details() if callable(details) else str(e))}"


class TraefikKVRouteTable:
    """Our routes in a jupyterhub-traefik-proxy key-value store (see the module)."""

    name = "proxy"

    def __init__(self, proxy: TKvProxy):
        self.proxy = proxy
        self.log = proxy.log
        self.sep = proxy.kv_separator
        self.base = f"{proxy.kv_jupyterhub_prefix}-{RECORDS}"
        self.records = f"{self.base}{self.sep}routes"
        self._marked = False  # the format key written
        self._refused: set[str] = set()  # routespecs refused and logged once

    def _record_key(self, routespec: str) -> str:
        return f"{self.records}{self.sep}{generate_alias(routespec, 'router')}"

    def _traefik_keys(self, routespec: str, data: dict) -> dict[str, str]:
        """The route's router and service, as the store's flat keys and values."""
        route = {k: v for k, v in data.items() if k != "target"}
        traefik, _ = self.proxy._dynamic_config_for_route(routespec, data["target"], route)
        return self.proxy.flatten_dict_for_kv(traefik, prefix=self.proxy.kv_traefik_prefix)

    async def get_all(self) -> dict[str, dict]:
        await self._started()
        try:
            tree = await self.proxy._kv_get_tree(self.base)  # with the format key (an empty tree is logged)
        except Exception as e:  # the store's client has errors of its own, all of them failures here
            raise RouteAPIError(f"traefik {self.proxy.provider_name}: read {self.base}: {store_error(e)}") from None
        routes = {}
        records = tree.get("routes") if isinstance(tree, dict) else None
        for key, value in (records if isinstance(records, dict) else {}).items():
            try:
                record = json.loads(value)
                routes[record["routespec"]] = record["data"]
            except (ValueError, TypeError, KeyError) as e:  # not a record of ours: left alone
                self.log.warning("jhproxy-routes: %s%s%s in the store skipped: %s", self.records, self.sep, shown(key), shown(e))
        return routes

    async def add(self, routespec: str, data: dict) -> None:
        await self.add_many({routespec: data})

    async def delete(self, routespec: str) -> None:
        await self.delete_many([routespec])

    async def add_many(self, routes: dict[str, dict]) -> None:
        """Each route's keys in one transaction, a few routes per transaction; then one wait
        until Traefik serves the last one."""
        await self._started()
        batch: dict[str, str] = {}
        last = None
        for spec, data in routes.items():
            why = unsafe(spec)
            if why:
                self._refuse(spec, why)
                continue
            data = {**data, ROUTE_TAG: True}
            keys = self._traefik_keys(spec, data)
            keys[self._record_key(spec)] = json.dumps({"routespec": spec, "data": data}, separators=(",", ":"))
            if batch and len(batch) + len(keys) > MAX_KEYS_PER_CALL:
                await self._call(f"add {len(batch)} key(s)", self.proxy._kv_atomic_set(batch))
                batch = {}
            batch.update(keys)
            last = spec
        if batch:
            await self._call(f"add {len(batch)} key(s)", self.proxy._kv_atomic_set(batch))
        if last is not None:
            where = f"{self.proxy.provider_name} at {self.proxy.kv_traefik_prefix!r}"
            await until_served(self.proxy, last, f"after it was stored: Traefik's {where} provider must read the same store")

    async def delete_many(self, routespecs: list[str]) -> None:
        """Each route's exact keys deleted in one transaction, a few routes per transaction;
        a route not there deletes nothing."""
        await self._started()
        batch: list[str] = []
        for spec in routespecs:
            keys = [*self._traefik_keys(spec, {"target": "http://127.0.0.1"}), self._record_key(spec)]  # names only
            if batch and len(batch) + len(keys) > MAX_KEYS_PER_CALL:
                await self._call(f"delete {len(batch)} key(s)", self.proxy._kv_atomic_delete(*batch))
                batch = []
            batch += keys
        if batch:
            await self._call(f"delete {len(batch)} key(s)", self.proxy._kv_atomic_delete(*batch))

    async def _started(self) -> None:
        """The proxy's own start-up (an external Traefik's dynamic config) done first, as its
        methods do; then the format key, once."""
        future = self.proxy._start_future
        if future and not future.done():
            await future
        if not self._marked:
            await self._call("write the format key", self.proxy._kv_atomic_set({f"{self.base}{self.sep}format": FORMAT}))
            self._marked = True

    async def _call(self, what: str, call) -> None:
        """Await a store call; its failure as a RouteAPIError, as the route manager expects."""
        try:
            async with self.proxy.semaphore:
                await call
        except Exception as e:  # etcd's gRPC and redis' errors share no base class
            raise RouteAPIError(f"traefik {self.proxy.provider_name}: {what}: {store_error(e)}") from None

    def _refuse(self, routespec: str, why: str) -> None:
        if routespec not in self._refused:
            self._refused.add(routespec)
            self.log.error("jhproxy-routes: no Traefik route for %s: %s", shown(routespec), why)


class TraefikKVPortRoutes(TraefikPortRoutes):
    """Our routes in the store of a jupyterhub-traefik-proxy key-value proxy."""

    def make_route_table(self) -> TraefikKVRouteTable:
        return TraefikKVRouteTable(self)


class TraefikEtcdPortRoutesProxy(TraefikKVPortRoutes, TraefikEtcdProxy):
    """jupyterhub-traefik-proxy's etcd proxy with one extra route per allowed port of each
    running server (see the module); its client reads messages of up to 1 GiB unless
    ``c.TraefikEtcdProxy.etcd_client_kwargs`` has ``grpc_options`` of its own."""

    @default("etcd_client_kwargs")
    def _default_etcd_client_kwargs(self):
        return {"grpc_options": ETCD_GRPC_OPTIONS}

    @validate("etcd_client_kwargs")
    def _with_grpc_options(self, proposal):
        return {"grpc_options": ETCD_GRPC_OPTIONS, **proposal.value}

    def proxy_ports(self) -> dict[str, str]:
        return {**super().proxy_ports(), self.etcd_url: "the etcd store of the routes"}


class TraefikRedisPortRoutesProxy(TraefikKVPortRoutes, TraefikRedisProxy):
    """jupyterhub-traefik-proxy's redis proxy with one extra route per allowed port of each
    running server (see the module)."""

    def proxy_ports(self) -> dict[str, str]:
        return {**super().proxy_ports(), self.redis_url: "the redis store of the routes"}
