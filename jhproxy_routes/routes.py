"""The route manager: which routes each running server should have, and making it so.

For every ready server and every allowed port there is one CHP route. A port that needs no
check goes straight from CHP to the app; any other goes to the sidecar, which gets an entry
in its own table with the app's address and the check to make. Changes are ordered so that a
port is never open wider than its settings, even between two API calls: the sidecar learns a
check before CHP sends traffic to it, and forgets it only after CHP stops doing so.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from jupyterhub.utils import url_path_join

from .audit import AuditLog
from .config import GROUP_PREFIX, PortRoutes, PortSpec
from .metrics import RECONCILE_DURATION, RECONCILE_ERRORS, RECONCILE_FIXES, ROUTES
from .replicas import SidecarReplicas
from .routeapi import ENTRIES_PER_YIELD, RouteAPI, RouteAPIError, SidecarRouteAPI
from .targets import SharedHostError, TargetsPending, port_targets
from .tokens import AccessStore, ServerAccess, with_new_token

# JupyterHub sets login and server cookies on these paths (below base_url): a route there
# would hand them to the app unless the sidecar strips them.
COOKIE_PATHS = ("hub/", "user/", "services/")
SERVERS_PER_YIELD = 100  # servers looked at between two yields to the event loop in a reconciliation


def port_choice(spec: PortSpec, access: ServerAccess) -> str:
    """The port's access as set: the user's override, else the admin's (see PORT_ACCESS)."""
    return access.port_access.get(spec.key, spec.access)


@dataclass(frozen=True)
class PortRule:
    """What a request to a port must show. ``restricted`` admits the owner's hub login, a
    valid token if ``token``, any hub user's login if ``users``, members of ``groups``."""

    access: str  # public | disabled | restricted
    token: bool = False
    users: bool = False
    groups: tuple[str, ...] = ()

    @property
    def admits(self) -> list[str]:
        """Who gets in, in words for the token API and the page."""
        if self.access != "restricted":
            return ["anyone"] if self.access == "public" else []
        groups = [GROUP_PREFIX + g for g in self.groups]
        return ["owner", *(["token"] if self.token else []), *(["users"] if self.users else []), *groups]


def port_rule(spec: PortSpec, access: ServerAccess) -> PortRule:
    """The rule of one port, from its choice and the server's token mode."""
    choice = port_choice(spec, access)
    if choice in ("public", "disabled"):
        return PortRule(choice)
    if choice == "owner":
        return PortRule("restricted")
    if access.mode == "allow_all":  # server, users, group: the token mode lets anyone in
        return PortRule("public")
    token = access.mode == "token"
    if choice == "users":
        return PortRule("restricted", token=token, users=True)
    if choice.startswith(GROUP_PREFIX):
        return PortRule("restricted", token=token, groups=(choice[len(GROUP_PREFIX):],))
    return PortRule("restricted", token=token)  # server


@dataclass(frozen=True)
class PortRoute:
    """The wanted state of one port's route in CHP and (unless direct) in the sidecar."""

    routespec: str
    chp: dict
    sidecar: dict | None


class RouteManager:
    """Keeps CHP's and the sidecar's tables in line with the running servers."""

    def __init__(self, settings: PortRoutes, base_url: str, chp_api: RouteAPI, log: logging.Logger):
        self.settings = settings
        self.base_url = base_url
        settings.check_together()
        self.specs = settings.port_specs
        self.single_ports = [spec for spec in self.specs if not spec.is_range]
        self.port_ranges = [spec for spec in self.specs if spec.is_range]
        self.template = settings.template
        self.log = log
        self.store = AccessStore(settings.db_url)
        self.audit = AuditLog(settings.audit_log_path)
        self.chp = chp_api
        replica_urls = settings.sidecar_api_urls or [settings.sidecar_url]
        several = len(replica_urls) > 1 or settings.sidecar_api_resolve_all
        self.sidecar = SidecarReplicas(
            replica_urls,
            settings.sidecar_api_resolve_all,
            lambda url: SidecarRouteAPI(
                f"sidecar {url}" if several else "sidecar",
                url_path_join(url, "_jhproxy-routes/"),
                settings.sidecar_api_token,
                timeout=settings.api_timeout,
                retry_timeout=settings.api_retry_timeout,
                concurrency=settings.concurrency,
                log=log,
            ),
        )
        self._reconcile_lock = asyncio.Lock()

    # ---- access settings -------------------------------------------------------------
    def behavior(self, spawner, name: str) -> str:
        """``default_startup_behavior`` or ``shutdown_behavior``: the spawner's own setting
        (``TokenizedDockerSpawner``, as in jhproxy) if it has one, else ``c.PortRoutes``'."""
        return getattr(spawner, name, None) or getattr(self.settings, name)

    async def access_for(self, user, servername: str) -> ServerAccess:
        """The server's stored settings; on first use, those of ``default_startup_behavior``."""
        access = self.store.get(user.name, servername)
        if access is None:
            access = await self.first_access(user.spawners[servername])
            self.store.put(user.name, servername, access)
        return access

    async def first_access(self, spawner) -> ServerAccess:
        """The settings a server gets the first time it starts (not stored yet)."""
        behavior = self.behavior(spawner, "default_startup_behavior")
        if behavior == "allow_all":
            return ServerAccess().allow_all()
        if behavior == "random":
            access, _ = await with_new_token(ServerAccess())
            return access
        return ServerAccess()

    # ---- wanted routes ---------------------------------------------------------------
    def routespec(self, username: str, servername: str, port: int) -> str:
        return url_path_join(self.base_url, self.template.render(username, servername, port))

    def ranges_routespec(self, username: str, servername: str) -> str:
        """The one route of all port ranges of a server."""
        return url_path_join(self.base_url, self.template.render_prefix(username, servername))

    def server_routespecs(self, username: str, servername: str) -> list[str]:
        """The routespecs of every allowed port of one server (none if it gets no routes)."""
        if not self.template.serves(username, servername):
            return []
        specs = [self.routespec(username, servername, spec.port) for spec in self.single_ports]
        return specs + ([self.ranges_routespec(username, servername)] if self.port_ranges else [])

    async def wanted_routes(self, user, servername: str, access: ServerAccess) -> dict[str, PortRoute]:
        spawner = user.spawners[servername]
        if not self.template.serves(user.name, servername):
            return {}
        try:
            targets = await port_targets(spawner, [s.port for s in self.specs], self.settings.allow_shared_host)
        except SharedHostError as e:
            self.log.error("jhproxy-routes: no port routes for %s/%s: %s", user.name, servername, e)
            return {}
        routes = {}
        for spec in self.single_ports:
            if spec.port == spawner.port:
                self.log.error(
                    "jhproxy-routes: port %i of %s/%s is its Jupyter server's own port: no route, it would"
                    " open the whole server to the port's token (take it out of c.PortRoutes.ports)",
                    spec.port, user.name, servername,
                )  # fmt: skip
                continue
            if spec.port not in targets:
                self.log.warning("jhproxy-routes: port %i of %s/%s has no address (not published)", spec.port, user.name, servername)
                continue
            routespec = self.routespec(user.name, servername, spec.port)
            app = targets[spec.port]
            who = {"username": user.name, "servername": servername, "port": spec.port}
            if self._direct(routespec, spec, access):
                routes[routespec] = PortRoute(routespec, {"target": app, **who}, None)
                continue
            sidecar = {"target": app, **self._sidecar_rule(spec, access), **who}
            routes[routespec] = PortRoute(routespec, {"target": self.settings.sidecar_url, **who}, sidecar)
        if self.port_ranges:
            ranges = self._ranges_route(user.name, servername, spawner.port, targets, access)
            if ranges is not None:
                routes[ranges.routespec] = ranges
        return routes

    def _sidecar_rule(self, spec: PortSpec, access: ServerAccess) -> dict:
        """What the sidecar checks on a port (or range), and how it forwards."""
        rule = port_rule(spec, access)
        return {
            "access": rule.access,
            "token_sha256": access.token_sha256 if rule.token else None,
            "users": rule.users,
            "groups": list(rule.groups),
            "cors_origins": list(spec.cors_origins or self.settings.cors_origins),
            "strip_prefix": spec.strip_prefix,
        }

    def _ranges_route(self, username: str, servername: str, server_port: int, targets: dict, access) -> PortRoute | None:
        """The one route of a server's port ranges: to the sidecar, which reads the port
        from the path. The Jupyter server's own port, if in a range, is left out."""
        ranges = []
        for spec in self.port_ranges:
            if spec.port not in targets:  # DockerSpawner's host-binding mode publishes single ports only
                self.log.warning(
                    "jhproxy-routes: port range %s of %s/%s: the server has no address of its own"
                    " (DockerSpawner needs use_internal_ip for ranges)", spec.key, username, servername,
                )  # fmt: skip
                continue
            ranges.append({"target": targets[spec.port], "last": spec.last, **self._sidecar_rule(spec, access)})
        if not ranges:
            return None
        routespec = self.ranges_routespec(username, servername)
        who = {"username": username, "servername": servername, "port": ", ".join(s.key for s in self.port_ranges)}
        sidecar = {
            "ranges": ranges,
            "allowed": ", ".join(spec.key for spec in self.specs),
            "excluded": [server_port] if any(spec.covers(server_port) for spec in self.port_ranges) else [],
            **who,
        }
        return PortRoute(routespec, {"target": self.settings.sidecar_url, **who}, sidecar)

    def _direct(self, routespec: str, spec: PortSpec, access: ServerAccess) -> bool:
        """A port set ``public`` goes straight to the app, untouched, where no cookie needs
        stripping. A server in ``allow_all`` mode still goes through the sidecar, which
        answers CORS for it as for a token (as jhproxy did)."""
        under_cookies = any(routespec.startswith(self.base_url + p) for p in COOKIE_PATHS)
        return (
            port_choice(spec, access) == "public"
            and self.settings.direct_public_routes
            and not spec.strip_prefix
            and not under_cookies
        )

    # ---- one server ------------------------------------------------------------------
    async def server_started(self, user, servername: str) -> None:
        access = await self.access_for(user, servername)
        await self.apply(user, servername, access)

    async def apply(self, user, servername: str, access: ServerAccess) -> None:
        """Route every port of a running server as ``access`` says (raises RouteAPIError)."""
        wanted = await self.wanted_routes(user, servername, access)
        results = await asyncio.gather(*(self._apply_route(r) for r in wanted.values()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, RouteAPIError):
                raise error
        if errors:  # every port that failed, not only the first
            raise RouteAPIError("; ".join(map(str, errors)))

    async def _apply_route(self, route: PortRoute) -> None:
        if route.sidecar is not None:
            await self.sidecar.add(route.routespec, route.sidecar)
            await self.chp.add(route.routespec, route.chp)
        else:
            await self.chp.add(route.routespec, route.chp)
            await self.sidecar.delete(route.routespec)

    async def server_stopped(self, user, servername: str) -> None:
        """Remove a server's port routes and apply ``shutdown_behavior``."""
        if self.behavior(user.spawners[servername], "shutdown_behavior") == "disable":
            access = self.store.get(user.name, servername)
            if access is not None and access.mode != "disabled":
                self.store.put(user.name, servername, access.disabled())
        specs = self.server_routespecs(user.name, servername)  # none for a server without routes
        await asyncio.gather(*(self.chp.delete(s) for s in specs))
        await asyncio.gather(*(self.sidecar.delete(s) for s in specs))

    # ---- everything --------------------------------------------------------------------
    async def reconcile(self, users) -> None:
        """Compare wanted and actual routes of all servers; add the missing, drop the stale."""
        async with self._reconcile_lock:
            try:
                with RECONCILE_DURATION.time():
                    await self._reconcile(users)
            except RouteAPIError as e:
                RECONCILE_ERRORS.inc()
                self.log.error("jhproxy-routes: reconciliation failed, will retry: %s", e)

    async def _reconcile(self, users) -> None:
        # one read of the store, and one write for servers seen for the first time: a query
        # or a commit per server would take minutes for ten thousand of them
        stored = await asyncio.to_thread(self.store.all)
        first_seen: dict[tuple[str, str], ServerAccess] = {}
        wanted: dict[str, PortRoute] = {}
        keep: set[str] = set()  # routes of servers in transition: leave them alone
        for count, (user, servername, spawner) in enumerate(self._routed_servers(users), 1):
            if count % SERVERS_PER_YIELD == 0:
                await asyncio.sleep(0)  # let the hub serve requests in between
            try:
                if spawner.ready:
                    key = (user.name, servername)
                    if key not in stored:
                        stored[key] = first_seen[key] = await self.first_access(spawner)
                    wanted.update(await self.wanted_routes(user, servername, stored[key]))
                    continue
            except TargetsPending as e:
                self.log.info("jhproxy-routes: routes of %s/%s left as they are: %s", user.name, servername, e)
            keep.update(self.server_routespecs(user.name, servername))
        if first_seen:
            await asyncio.to_thread(self.store.add_missing, first_seen)
        chp_routes, sidecar_routes = await asyncio.gather(self.chp.get_all(), self.sidecar.get_all())

        def differs(actual: dict | None, want: dict) -> bool:
            return actual is None or any(actual.get(k) != v for k, v in want.items())

        sidecar_adds, chp_adds = [], []
        for count, r in enumerate(wanted.values(), 1):
            if r.sidecar and differs(sidecar_routes.get(r.routespec), r.sidecar):
                sidecar_adds.append(r)
            if differs(chp_routes.get(r.routespec), r.chp):
                chp_adds.append(r)
            if count % ENTRIES_PER_YIELD == 0:
                await asyncio.sleep(0)
        chp_stale = [s for s in chp_routes if s not in wanted and s not in keep]
        sidecar_stale = [
            s for s in sidecar_routes if s not in keep and (s not in wanted or wanted[s].sidecar is None)
        ]
        for what, routes in (("sidecar", sidecar_adds), ("proxy", chp_adds)):
            if len(routes) > 20:
                self.log.info("jhproxy-routes: adding %i %s routes", len(routes), what)
                continue
            for r in routes:
                self.log.info("jhproxy-routes: adding %s route %s -> %s", what, r.routespec, r.chp["target"])
        await self.sidecar.add_many({r.routespec: r.sidecar for r in sidecar_adds})
        RECONCILE_FIXES.labels("sidecar", "added").inc(len(sidecar_adds))
        await self.chp.add_many({r.routespec: r.chp for r in chp_adds})
        RECONCILE_FIXES.labels("proxy", "added").inc(len(chp_adds))
        for what, api, stale in (("proxy", self.chp, chp_stale), ("sidecar", self.sidecar, sidecar_stale)):
            for s in stale:
                self.log.info("jhproxy-routes: removing stale %s route %s", what, s)
            await api.delete_many(stale)
            RECONCILE_FIXES.labels(what, "removed").inc(len(stale))
        direct = sum(r.sidecar is None for r in wanted.values())
        ROUTES.labels("direct").set(direct)
        ROUTES.labels("sidecar").set(len(wanted) - direct)
        await self.sidecar.mark_complete()

    def _routed_servers(self, users):
        """(user, servername, spawner) of every server that is ready or in transition."""
        for user in list(users.values()):
            for servername, spawner in list(user.spawners.items()):
                if (spawner.ready or spawner.pending) and self.template.serves(user.name, servername):
                    yield user, servername, spawner
