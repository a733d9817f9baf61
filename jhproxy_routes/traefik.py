"""The port routes in Traefik as The Littlest JupyterHub runs it: jupyterhub-traefik-proxy's
file provider (``c.JupyterHub.proxy_class = "traefik_file"``, ``TraefikFileProviderProxy``).

``install(c)`` sets ``TraefikPortRoutesProxy`` for such a config: the hub's own class with
``PortRoutesMixin``, configured by the same ``c.TraefikProxy`` and
``c.TraefikFileProviderProxy`` settings. Its route table, ``TraefikRouteTable``, keeps our
routes in a dynamic configuration file of their own, ``jhproxy-routes.toml`` beside the
hub's ``dynamic_config_file`` (``routesfile.py``), which Traefik's file provider merges with
the hub's when it watches their directory: TLJH's static config does
(``providers.file.directory``), and so does the static config this class writes when the hub
starts Traefik (``should_start``; that directory may then hold no other dynamic
configuration). ``traefik_kv.py`` has the etcd and redis providers.

Why a file of our own: jupyterhub-traefik-proxy keeps its table in the hub's process and
serialises all of it (TOML, in pure Python, in the hub's event loop) at every change: with
10,000 port routes in it, every write blocked the hub for seconds, the hub's own too (a
server starting). Our file is written apart: the table is changed in memory, each route's
lines are made once, and a write (joined, synced, renamed over the file) runs in a thread;
changes made while a write runs go together in the next one.

What differs from CHP, and how it is met:

- jupyterhub-traefik-proxy's ``get_all_routes`` shows the hub every route of its table and
  the hub's ``check_routes`` deletes those it did not make: ours are not in its table.
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
import os
from urllib.parse import unquote

from jupyterhub.utils import exponential_backoff
from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy
from jupyterhub_traefik_proxy.proxy import TraefikProxy

from . import routesfile
from .logsafe import shown
from .proxy import PortRoutesMixin
from .routeapi import ROUTE_TAG, RouteAPIError

__all__ = [
    "Refusals",
    "TraefikDirectoryProxy",
    "TraefikPortRoutes",
    "TraefikPortRoutesProxy",
    "TraefikRouteTable",
    "unsafe",
    "until_served",
]

ROUTES_PER_YIELD = 100  # routes made (~45 µs each) between two yields to the hub's event loop


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


class Refusals:
    """``refuse(routespec, why)``: a route that gets no Traefik route, logged once per routespec."""

    def __init__(self, log):
        self.log = log
        self.seen: set[str] = set()

    def __call__(self, routespec: str, why: str) -> None:
        if routespec not in self.seen:
            self.seen.add(routespec)
            self.log.error("jhproxy-routes: no Traefik route for %s: %s", shown(routespec), why)


async def until_started(proxy: TraefikProxy) -> None:
    """Wait for the proxy's own start-up (an external Traefik's API), as its methods do."""
    if proxy._start_future and not proxy._start_future.done():
        await proxy._start_future


async def until_served(proxy: TraefikProxy, routespec: str, after: str) -> None:
    """Wait until Traefik serves ``routespec`` (its router and service, in its API), as
    jupyterhub-traefik-proxy's ``_wait_for_route`` but at most 0.25 s apart: Traefik takes a
    second or two to load 10,000 routes, and that wait's intervals grow past that. Bounded by
    ``c.TraefikProxy.check_route_timeout``; ``after`` ends the timeout's message."""
    await until_started(proxy)

    async def served() -> bool:
        check = proxy._check_for_traefik_service
        return await check(routespec, "service") and await check(routespec, "router")

    async with proxy.semaphore:
        try:
            await exponential_backoff(
                served,
                f"Traefik route for {routespec}: not ready",
                start_wait=0.05,
                scale_factor=1.2,
                max_wait=0.25,
                timeout=proxy.check_route_timeout,
            )
        except (asyncio.TimeoutError, TimeoutError):
            raise RouteAPIError(
                f"Traefik did not serve {shown(routespec)} within {proxy.check_route_timeout} s"
                f" (c.TraefikProxy.check_route_timeout) {after}"
            ) from None


class TraefikRouteTable:
    """Our routes in a file of their own beside a jupyterhub-traefik-proxy file provider's
    (see the module). Each route's router and service are what that proxy's own
    ``_dynamic_config_for_route`` makes, and a route added is waited for with its
    ``_check_for_traefik_service`` (jupyterhub-traefik-proxy 2.x, pinned below 3)."""

    name = "proxy"

    def __init__(self, proxy: TraefikFileProviderProxy):
        self.proxy = proxy
        self.log = proxy.log
        self.path = routesfile.routes_path(proxy.dynamic_config_file)
        self._routes: dict[str, dict] = {}  # routespec -> data with its target and ROUTE_TAG
        self._lines: dict[str, routesfile.RouteLines] = {}  # routespec -> its lines in the file
        self._loaded: asyncio.Future | None = None  # the file as a hub before us left it, read once
        self._changes = 0  # changes made to the table so far
        self._written = 0  # changes the file holds
        self._writing: asyncio.Future | None = None
        self._refuse = Refusals(self.log)

    async def _table(self) -> dict[str, dict]:
        """The table, read from the file when first needed (in a thread)."""
        if self._loaded is None:
            self._loaded = asyncio.ensure_future(self._load())
        await asyncio.shield(self._loaded)
        return self._routes

    async def _load(self) -> None:
        try:
            await asyncio.to_thread(routesfile.remove_leftovers, self.path)
            routes = await asyncio.to_thread(routesfile.read, self.path)
        except (OSError, ValueError) as e:
            self.log.warning("jhproxy-routes: %s not read, its routes will be written again: %s", self.path, shown(e))
            routes = {}
        for count, (spec, data) in enumerate(routes.items(), 1):
            try:
                self._set(spec, data)
            except (ValueError, TypeError) as e:  # not a route we would write: gone at the next write
                self.log.warning("jhproxy-routes: route %s in %s skipped: %s", shown(spec), self.path, shown(e))
            if count % ROUTES_PER_YIELD == 0:
                await asyncio.sleep(0)

    def _set(self, routespec: str, data: dict) -> None:
        target = data["target"]
        route = {k: v for k, v in data.items() if k != "target"}
        traefik, _ = self.proxy._dynamic_config_for_route(routespec, target, route)
        self._routes[routespec] = data
        self._lines[routespec] = routesfile.route_lines(routespec, data, traefik)

    async def get_all(self) -> dict[str, dict]:
        return dict(await self._table())

    async def add(self, routespec: str, data: dict) -> None:
        await self.add_many({routespec: data})

    async def delete(self, routespec: str) -> None:
        await self.delete_many([routespec])

    async def add_many(self, routes: dict[str, dict]) -> None:
        """All of ``routes`` in the table, one write of the file, one wait until Traefik
        serves them (it loads the file as a whole)."""
        await self._table()
        added = []
        for count, (spec, data) in enumerate(routes.items(), 1):
            why = unsafe(spec)
            if why:
                self._refuse(spec, why)
                continue
            self._set(spec, {**data, ROUTE_TAG: True})
            added.append(spec)
            if count % ROUTES_PER_YIELD == 0:
                await asyncio.sleep(0)
        if added:
            self._changes += 1
            await self._call(f"add {len(added)} route(s)", self._save_and_wait(added[-1]))
        elif self._written < self._changes:  # a write failed: this one has its changes
            await self._call("write the routes", self._save())

    async def _save_and_wait(self, routespec: str) -> None:
        await self._save()
        await until_served(
            self.proxy,
            routespec,
            f"after it was written to {self.path}: Traefik's file provider"
            " must watch that directory (providers.file.directory), as TLJH's does",
        )

    async def delete_many(self, routespecs: list[str]) -> None:
        """None of ``routespecs`` in the table (those not there skipped), one write of the file."""
        table = await self._table()
        gone = [spec for spec in routespecs if table.pop(spec, None) is not None]
        for spec in gone:
            del self._lines[spec]
        if gone:
            self._changes += 1
        if self._written < self._changes:  # with the changes of a write that failed
            await self._call(f"delete {len(gone)} route(s)", self._save())

    async def _save(self) -> None:
        """Until the file holds every change made to the table so far: one write at a time,
        in a thread, and one write for all the changes made while the previous one ran."""
        wanted = self._changes
        while self._written < wanted:
            if self._writing is None:
                self._writing = asyncio.ensure_future(self._write())
                self._writing.add_done_callback(lambda f: f.cancelled() or f.exception())  # its callers see it
            await asyncio.shield(self._writing)

    async def _write(self) -> None:
        try:
            changes, lines = self._changes, list(self._lines.values())
            await asyncio.to_thread(routesfile.write, self.path, lines)
            self._written = changes
        finally:
            self._writing = None

    async def _call(self, what: str, call) -> None:
        """Await ``call``; its failure as a RouteAPIError, as the route manager expects."""
        try:
            await call
        except (OSError, asyncio.TimeoutError, TimeoutError) as e:
            raise RouteAPIError(f"traefik {what}: {type(e).__name__}: {e or 'timed out'}") from None


def other_dynamic_config(directory: str, own: set[str]) -> list[str]:
    """What Traefik's file provider would load from ``directory`` besides the files in ``own``:
    other ``.toml``, ``.yaml`` and ``.yml`` files, and folders (it loads them too)."""
    others = []
    for entry in os.scandir(directory):
        if entry.name in own or entry.name == routesfile.TEMP_DIR:
            continue
        if entry.is_dir() or os.path.splitext(entry.name)[1].lower() in (".toml", ".yaml", ".yml"):
            others.append(entry.name)
    return sorted(others)


class TraefikDirectoryProxy(TraefikFileProviderProxy):
    """jupyterhub-traefik-proxy's file provider whose Traefik, when the hub starts it, watches
    the directory of ``dynamic_config_file`` (the hub's routes and ours), not that file alone;
    our file goes with the hub's when the hub stops Traefik. An external Traefik (TLJH's) must
    be configured so (``providers.file.directory``)."""

    async def _setup_traefik_static_config(self):
        directory = os.path.dirname(os.path.abspath(self.dynamic_config_file))
        own = {os.path.basename(self.dynamic_config_file), routesfile.ROUTES_FILE}
        if os.path.dirname(os.path.abspath(self.static_config_file)) == directory:
            own.add(os.path.basename(self.static_config_file))  # Traefik reads nothing it knows in it
        others = other_dynamic_config(directory, own) if os.path.isdir(directory) else []
        if others:
            raise ValueError(
                f"c.TraefikFileProviderProxy.dynamic_config_file is {self.dynamic_config_file!r}: Traefik would"
                f" load {', '.join(others)} from its directory as well ({directory}; jhproxy-routes has Traefik"
                f" watch that directory, where it keeps its routes in {routesfile.ROUTES_FILE}): give the file"
                " a directory of its own"
            )
        self.static_config["providers"] = {"file": {"directory": directory, "watch": True}}
        await TraefikProxy._setup_traefik_static_config(self)  # the file provider's would watch the file alone

    def _cleanup(self):
        super()._cleanup()
        routesfile.remove(routesfile.routes_path(self.dynamic_config_file))


class TraefikPortRoutes(PortRoutesMixin):
    """What every Traefik proxy of ours shares, mixed in before a jupyterhub-traefik-proxy class."""

    direct_routes = False  # Traefik keeps no activity per route

    def proxy_ports(self) -> dict[str, str]:
        return {self.public_url: "the proxy's public port", self.traefik_api_url: "Traefik's API"}


class TraefikPortRoutesProxy(TraefikPortRoutes, TraefikDirectoryProxy):
    """jupyterhub-traefik-proxy's file provider with one extra route per allowed port of each
    running server (see the module)."""

    def make_route_table(self) -> TraefikRouteTable:
        return TraefikRouteTable(self)
