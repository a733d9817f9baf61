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
  it; JSON keeps the data's types, which the store's flat strings would not. A record is
  read as it is (not as a tree) and acted on only when it is one of ours for its own key.

A route's keys are set in one transaction, and so are its deletions: Traefik never sees a
router without its service. Routes go to the store a few per transaction (etcd refuses more
than 128 operations or 1.5 MiB in one), and a route deleted is deleted by its exact keys
(jupyterhub-traefik-proxy deletes the hub's by tree: a scan of the whole store per route on
redis). Each call to the store is bounded by ``c.PortRoutes.api_timeout`` (neither client
has a deadline: a frozen store would hang the table). Adding waits until Traefik serves the
last route added, as on the file provider.

Redis tells Traefik of changes only with keyspace notifications on (``notify-keyspace-events
KEA``); Traefik's etcd provider watches. ``traefik_consul`` is refused: jupyterhub-traefik-proxy
deprecates it (its client library is unmaintained), and no Consul server could be tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

from jupyterhub_traefik_proxy.etcd import TraefikEtcdProxy
from jupyterhub_traefik_proxy.kv_proxy import TKvProxy
from jupyterhub_traefik_proxy.redis import TraefikRedisProxy
from jupyterhub_traefik_proxy.traefik_utils import generate_alias
from traitlets import default, validate

from .logsafe import shown
from .routeapi import ROUTE_TAG, RouteAPIError
from .traefik import Refusals, TraefikPortRoutes, unsafe, until_served, until_started

__all__ = ["TraefikEtcdPortRoutesProxy", "TraefikKVRouteTable", "TraefikRedisPortRoutesProxy"]

MAX_KEYS_PER_CALL = 120  # below etcd's default limit of 128 operations in one transaction
MAX_BYTES_PER_CALL = 512 << 10  # well below etcd's default limit of 1.5 MiB for a request
MAX_ROUTESPEC = 2000  # characters: a route's keys stay far below that (names from an authenticator are not bounded)
#: the etcd client's gRPC options: a read of many routes is one message, and gRPC's default
#: limit, 4 MiB, is about 10,000 of our records (the hub's own records of as many routes, more)
ETCD_GRPC_OPTIONS = [("grpc.max_receive_message_length", 1 << 30)]
ETCD_RETRY_AFTER = 1  # s: etcdpy's wait before it uses an endpoint again after a failure (its default: 300)
RECORDS = "jhproxy-routes"  # our records' prefix: "<kv_jupyterhub_prefix>-jhproxy-routes"


def store_error(e: Exception) -> str:
    """A store client's error in one line (gRPC's own text is several, with a debug string)."""
    details = getattr(e, "details", None)
    return f"{type(e).__name__}: {shown(details() if callable(details) else str(e))}"


async def etcd_pairs(proxy: TraefikEtcdProxy, prefix: str) -> list[tuple[str, str]]:
    return [(meta.key.decode(), value.decode()) for value, meta in await proxy._etcd_get_prefix(prefix)]


async def redis_pairs(proxy: TraefikRedisProxy, prefix: str) -> list[tuple[str, str]]:
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"  # the prefix as it is, not a glob
    keys = [key async for key in proxy.redis.scan_iter(match=pattern, count=1000)]
    values = await proxy.redis.mget(keys) if keys else []
    return [(key, value) for key, value in zip(keys, values, strict=True) if value is not None]  # None: deleted meanwhile


#: every key below a prefix, as it is: jupyterhub-traefik-proxy's ``_kv_get_tree`` builds a
#: tree, which one key of another shape (``0``, or a key below a record) makes fail as a whole
PAIRS = {"etcd": etcd_pairs, "redis": redis_pairs}


class TraefikKVRouteTable:
    """Our routes in a jupyterhub-traefik-proxy key-value store (see the module); each call
    to the store bounded by ``timeout`` seconds (neither store's client has a deadline)."""

    name = "proxy"

    def __init__(self, proxy: TKvProxy, timeout: float = 10):
        self.proxy = proxy
        self.log = proxy.log
        self.timeout = timeout
        self.sep = proxy.kv_separator
        self.records = f"{proxy.kv_jupyterhub_prefix}-{RECORDS}{self.sep}routes{self.sep}"
        self._refuse = Refusals(self.log)

    def _record_key(self, routespec: str) -> str:
        return self.records + generate_alias(routespec, "router")

    def _traefik_keys(self, routespec: str, data: dict) -> dict[str, str]:
        """The route's router and service, as the store's flat keys and values."""
        route = {k: v for k, v in data.items() if k != "target"}
        traefik, _ = self.proxy._dynamic_config_for_route(routespec, data["target"], route)
        return self.proxy.flatten_dict_for_kv(traefik, prefix=self.proxy.kv_traefik_prefix)

    async def get_all(self) -> dict[str, dict]:
        """Our records, each checked: one that is not ours is logged and left alone, never
        acted on (its routespec must be its key's: a record claiming another route's would
        have the hub's own deleted)."""
        pairs = await self._call(f"read {self.records}", PAIRS[self.proxy.provider_name](self.proxy, self.records))
        routes = {}
        for key, value in pairs:
            try:
                record = json.loads(value)
                spec, data = record["routespec"], record["data"]
                if not (isinstance(spec, str) and spec.endswith("/") and isinstance(data, dict)):
                    raise ValueError("not a routespec and its data")
                if self._record_key(spec) != key:
                    raise ValueError(f"its routespec {spec!r} is not its key's")
                if data.get(ROUTE_TAG) is not True or unsafe(spec) or "target" not in data:
                    raise ValueError("not a route of ours")
                routes[spec] = data
            except (ValueError, TypeError, KeyError) as e:
                self.log.warning("jhproxy-routes: %s in the store skipped: %s", shown(key), shown(e))
        return routes

    async def add(self, routespec: str, data: dict) -> None:
        await self.add_many({routespec: data})

    async def delete(self, routespec: str) -> None:
        await self.delete_many([routespec])

    async def add_many(self, routes: dict[str, dict]) -> None:
        """Each route's keys in one transaction, a few routes per transaction; then one wait
        until Traefik serves the last one stored. A transaction that fails does not stop the
        others; the first failure is raised at the end."""
        per_route = []
        for spec, data in routes.items():
            why = unsafe(spec) or (len(spec) > MAX_ROUTESPEC and f"longer than {MAX_ROUTESPEC} characters")
            if why:
                self._refuse(spec, why)
                continue
            data = {**data, ROUTE_TAG: True}
            keys = self._traefik_keys(spec, data)
            keys[self._record_key(spec)] = json.dumps({"routespec": spec, "data": data}, separators=(",", ":"))
            per_route.append((spec, keys))
        stored, failure = await self._in_batches("add", per_route, self.proxy._kv_atomic_set)
        if stored:
            where = f"{self.proxy.provider_name} at {self.proxy.kv_traefik_prefix!r}"
            await until_served(
                self.proxy, stored[-1], f"after it was stored: Traefik's {where} provider must read the same store"
            )
        if failure:
            raise failure

    async def delete_many(self, routespecs: list[str]) -> None:
        """Each route's exact keys deleted in one transaction, a few routes per transaction
        (a route not there deletes nothing); the first failure raised once all were tried."""
        names = {"target": "http://127.0.0.1"}  # the keys' names do not depend on the target
        per_route = [(spec, dict.fromkeys([*self._traefik_keys(spec, names), self._record_key(spec)], "")) for spec in routespecs]
        _, failure = await self._in_batches("delete", per_route, lambda keys: self.proxy._kv_atomic_delete(*keys))
        if failure:
            raise failure

    async def _in_batches(self, verb: str, per_route, call) -> tuple[list[str], RouteAPIError | None]:
        """``call(keys)`` for each batch (``batches``), every one tried: the routespecs of the
        batches that succeeded, and the first failure."""
        done: list[str] = []
        failure = None
        for specs, keys in batches(per_route):
            try:
                await self._call(f"{verb} {len(specs)} route(s)", call(keys))
                done += specs
            except RouteAPIError as e:
                failure = failure or e
        return done, failure

    async def _call(self, what: str, call):
        """Await a store call, after the proxy's own start-up (an external Traefik's dynamic
        config) as its methods do, within ``timeout``; a failure as a RouteAPIError."""
        try:
            await until_started(self.proxy)
            async with self.proxy.semaphore:
                return await asyncio.wait_for(call, self.timeout)
        except asyncio.TimeoutError:
            raise RouteAPIError(f"traefik {self.proxy.provider_name}: {what}: no answer within {self.timeout:g} s") from None
        except Exception as e:  # etcd's gRPC and redis' errors share no base class
            raise RouteAPIError(f"traefik {self.proxy.provider_name}: {what}: {store_error(e)}") from None


def batches(per_route: list[tuple[str, dict[str, str]]]):
    """``(routespecs, keys)`` of a few routes at a time: at most ``MAX_KEYS_PER_CALL`` keys
    and ``MAX_BYTES_PER_CALL`` bytes, a route's keys never split."""
    specs: list[str] = []
    keys: dict[str, str] = {}
    size = 0
    for spec, route_keys in per_route:
        route_size = sum(len(k) + len(v) for k, v in route_keys.items())
        if specs and (len(keys) + len(route_keys) > MAX_KEYS_PER_CALL or size + route_size > MAX_BYTES_PER_CALL):
            yield specs, keys
            specs, keys, size = [], {}, 0
        specs.append(spec)
        keys.update(route_keys)
        size += route_size
    if specs:
        yield specs, keys


class TraefikKVPortRoutes(TraefikPortRoutes):
    """Our routes in the store of a jupyterhub-traefik-proxy key-value proxy."""

    def make_route_table(self) -> TraefikKVRouteTable:
        return TraefikKVRouteTable(self, timeout=self.port_routes.api_timeout)


class TraefikEtcdPortRoutesProxy(TraefikKVPortRoutes, TraefikEtcdProxy):
    """jupyterhub-traefik-proxy's etcd proxy with one extra route per allowed port of each
    running server (see the module); its client reads messages of up to 1 GiB unless
    ``c.TraefikEtcdProxy.etcd_client_kwargs`` has ``grpc_options`` of its own, tries etcd
    again a second after a failure, and leaves the hub's children alone when it forks them."""

    @default("etcd_client_kwargs")
    def _default_etcd_client_kwargs(self):
        return {"grpc_options": ETCD_GRPC_OPTIONS}

    @validate("etcd_client_kwargs")
    def _with_grpc_options(self, proposal):
        return {"grpc_options": ETCD_GRPC_OPTIONS, **proposal.value}

    @default("etcd")
    def _etcd_client(self):
        """jupyterhub-traefik-proxy's client, with two changes:

        - gRPC's fork handlers off (``GRPC_ENABLE_FORK_SUPPORT=false``, unless the hub's
          environment says otherwise), set before the client loads gRPC: on, they crashed now
          and then a child the hub forked while the client was busy (a user's server that
          never started; grpc/grpc#43055), and the hub forks every local server and service;
        - it tries etcd again a second after a failure, not five minutes (etcdpy's
          ``time_retry``, meant to fail over to another endpoint: with the one endpoint the
          hub knows, an etcd restart stopped every route change, the hub's own too)."""
        if "grpc" in sys.modules and "GRPC_ENABLE_FORK_SUPPORT" not in os.environ:
            self.log.warning(
                "jhproxy-routes: gRPC was loaded before etcd's client: set GRPC_ENABLE_FORK_SUPPORT=false in the"
                " hub's environment, or a server the hub starts may crash before it runs (grpc/grpc#43055)"
            )
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        client = super()._default_client()
        for endpoint in getattr(client, "endpoints", {}).values():
            endpoint.time_retry = ETCD_RETRY_AFTER
        return client

    def proxy_ports(self) -> dict[str, str]:
        return {**super().proxy_ports(), self.etcd_url: "the etcd store of the routes"}


class TraefikRedisPortRoutesProxy(TraefikKVPortRoutes, TraefikRedisProxy):
    """jupyterhub-traefik-proxy's redis proxy with one extra route per allowed port of each
    running server (see the module)."""

    def proxy_ports(self) -> dict[str, str]:
        return {**super().proxy_ports(), self.redis_url: "the redis store of the routes"}
