"""The port routes in Traefik as The Littlest JupyterHub runs it: jupyterhub-traefik-proxy's
file provider (``c.JupyterHub.proxy_class = "traefik_file"``, ``TraefikFileProviderProxy``).

``install(c)`` sets ``TraefikPortRoutesProxy`` for such a config: the hub's own class with
``PortRoutesMixin``, configured by the same ``c.TraefikProxy`` and
``c.TraefikFileProviderProxy`` settings. Its route table, ``TraefikRouteTable``, is that
proxy object itself, in the hub's process (``add_route``, ``delete_route``,
``get_all_routes`` as JupyterHub's Proxy API defines them); the file provider keeps the
table in memory and rewrites one file per change, so many routes at once (a
reconciliation) are merged into one write and one wait for Traefik to load it. The
key-value providers (etcd, consul, redis) are refused by ``install(c)``.

What differs from CHP, and how it is met:

- jupyterhub-traefik-proxy's ``get_all_routes`` does not skip routes without the
  ``jupyterhub`` key, so JupyterHub's ``check_routes`` would delete ours: the proxy class
  hides routes tagged ``ROUTE_TAG`` from the hub, while the table reads them all.
- Traefik keeps no activity per route (``direct_routes`` False): every port, public ones
  too, goes through the sidecar, which records the activity itself.
- A route's rule is ``PathPrefix(`/p/`) || Path(`/p`)`` (with ``Host(`h`) &&`` for a host
  route) and has no priority: Traefik prefers the longer rule, so a longer prefix wins, and
  the trailing ``/`` keeps ``/ports/alice/50001/`` out of ``/ports/alice/5000/``.
- A route added is done when Traefik serves it (jupyterhub-traefik-proxy's wait, bounded by
  ``c.TraefikProxy.check_route_timeout``), a route deleted when the file is written, as
  jupyterhub-traefik-proxy's own ``delete_route``: until Traefik reloads it, a request there
  reaches the sidecar, which has forgotten the route and answers 503 (closed, never open).
  A failure is a ``RouteAPIError``, logged and left to the next reconciliation as on CHP.
- The rule is built from the *unescaped* routespec: a name whose escape would turn into a
  backtick (ending the rule's string), a ``/`` (another server's route), a ``%`` or a
  control character never gets a route (``unsafe``), and the refusal is logged.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy
from jupyterhub_traefik_proxy.proxy import TraefikProxy

from .logsafe import shown
from .proxy import PortRoutesMixin
from .routeapi import ROUTE_TAG, RouteAPIError

__all__ = ["TraefikPortRoutesProxy", "TraefikRouteTable", "unsafe"]


def unsafe(routespec: str) -> str:
    """Why a routespec cannot become a Traefik rule ("" if it can): jupyterhub-traefik-proxy
    writes it unescaped between backticks, as a path that Traefik matches by segment."""
    plain = unquote(routespec)
    if "`" in plain:
        return "a backtick would end the rule's string"
    if plain.count("/") != routespec.count("/"):
        return "an escaped '/' would become a path segment (another server's route)"
    if "%" in plain:
        return "an escaped '%' would be unescaped again"
    if any(ord(c) < 0x20 or c == "\x7f" for c in plain):
        return "a control character"
    return ""


async def until_started(proxy: TraefikProxy) -> None:
    """Wait for the proxy's own start-up (an external Traefik's API), as its methods do."""
    if proxy._start_future and not proxy._start_future.done():
        await proxy._start_future


class TraefikRouteTable:
    """Our routes in a running jupyterhub-traefik-proxy file provider (see the module).
    Its merged writes use that proxy's own steps (``_dynamic_config_for_route``,
    ``_apply_dynamic_config``, ``_wait_for_route``, ``_keys_for_route``,
    ``_delete_dynamic_config``: jupyterhub-traefik-proxy 2.x, pinned below 3)."""

    name = "proxy"

    def __init__(self, proxy: TraefikProxy):
        self.proxy = proxy
        self.log = proxy.log
        self._refused: set[str] = set()  # routespecs refused and logged once

    async def all_routes(self) -> dict[str, dict]:
        """Every route, ours too (the proxy class hides ours from the hub):
        ``{routespec: {"routespec", "target", "data"}}``."""
        return await TraefikProxy.get_all_routes(self.proxy)

    async def get_all(self) -> dict[str, dict]:
        routes = await self.all_routes()
        return {spec: {**r["data"], "target": r["target"]} for spec, r in routes.items() if r["data"].get(ROUTE_TAG)}

    async def add(self, routespec: str, data: dict) -> None:
        await self.add_many({routespec: data})

    async def delete(self, routespec: str) -> None:
        await self.delete_many([routespec])

    async def add_many(self, routes: dict[str, dict]) -> None:
        """One write of the dynamic config for all of ``routes``, then one wait until Traefik
        serves them (it loads the file as a whole)."""
        merged_traefik: dict = {"http": {"routers": {}, "services": {}}}
        merged_hub: dict = {"routes": {}}
        for spec, data in routes.items():
            why = unsafe(spec)
            if why:
                self._refuse(spec, why)
                continue
            route = {k: v for k, v in data.items() if k != "target"}
            traefik, hub = self.proxy._dynamic_config_for_route(spec, data["target"], {**route, ROUTE_TAG: True})
            for kind in ("routers", "services"):
                merged_traefik["http"][kind].update(traefik["http"][kind])
            merged_hub["routes"].update(hub["routes"])
        if not merged_hub["routes"]:
            return
        last = next(reversed(merged_hub["routes"].values()))["routespec"]
        await self._call(f"add {len(merged_hub['routes'])} route(s)", self._write_and_wait(merged_traefik, merged_hub, last))

    async def _write_and_wait(self, traefik: dict, hub: dict, routespec: str) -> None:
        await until_started(self.proxy)
        async with self.proxy.semaphore:
            await self.proxy._apply_dynamic_config(traefik, hub)
            await self.proxy._wait_for_route(routespec)

    async def delete_many(self, routespecs: list[str]) -> None:
        """One write of the dynamic config without all of ``routespecs`` (those not there skipped)."""
        present = await self.all_routes()
        traefik_keys, hub_keys = [], []
        for spec in routespecs:
            if spec in present:
                keys = self.proxy._keys_for_route(spec)
                traefik_keys += keys[0]
                hub_keys += keys[1]
        if hub_keys:
            await self._call(f"delete {len(hub_keys)} route(s)", self.proxy._delete_dynamic_config(traefik_keys, hub_keys))

    async def _call(self, what: str, call) -> None:
        """Await ``call``; its failure as a RouteAPIError, as the route manager expects."""
        try:
            await call
        except (OSError, asyncio.TimeoutError, TimeoutError) as e:
            raise RouteAPIError(f"traefik {what}: {type(e).__name__}: {e or 'timed out'}") from None

    def _refuse(self, routespec: str, why: str) -> None:
        if routespec not in self._refused:
            self._refused.add(routespec)
            self.log.error("jhproxy-routes: no Traefik route for %s: %s", shown(routespec), why)


class TraefikPortRoutesProxy(PortRoutesMixin, TraefikFileProviderProxy):
    """jupyterhub-traefik-proxy's file provider with one extra route per allowed port of each
    running server (see the module)."""

    direct_routes = False  # Traefik keeps no activity per route

    def make_route_table(self) -> TraefikRouteTable:
        return TraefikRouteTable(self)

    def proxy_ports(self) -> dict[str, str]:
        return {self.public_url: "the proxy's public port", self.traefik_api_url: "Traefik's API"}

    async def get_all_routes(self) -> dict[str, dict]:
        """The routes the hub may see: ours hidden, or its ``check_routes`` would delete them."""
        routes = await super().get_all_routes()
        return {spec: route for spec, route in routes.items() if not route["data"].get(ROUTE_TAG)}
