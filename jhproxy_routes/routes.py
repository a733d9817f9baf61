"""The route manager: which routes each running server should have, and making it so.

For every ready server and every allowed port there is one route in the hub's proxy (its
``RouteTable``: CHP's REST API, or Traefik's file provider). A port that needs no check goes
straight from the proxy to the app where the proxy allows it (``direct_routes``); any other
goes to the sidecar, which gets an entry in its own table with the app's address and the
check to make. Changes are ordered so that a port is never open wider than its settings,
even between two API calls: the sidecar learns a check before the proxy sends traffic to it,
and forgets it only after the proxy stops doing so.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from jupyterhub.utils import subdomain_hook_idna, url_path_join
from traitlets import TraitError

from .audit import AuditLog
from .config import GROUP_PREFIX, PortRoutes, PortSpec, takes_token
from .contract import PortRange, RangesEntry, RouteEntry
from .errors import SharedHostError, TargetsPending
from .listening import ListeningReports, started_at
from .logsafe import shown
from .metrics import RECONCILE_DURATION, RECONCILE_ERRORS, RECONCILE_FIXES, ROUTES
from .policy import Limits, Policy
from .replicas import SidecarReplicas
from .route_templates import RouteTemplate
from .routeapi import ENTRIES_PER_YIELD, RouteAPIError
from .routetable import RouteTable
from .store import AccessStore
from .targets import has_own_network, is_hub_machine, port_targets, with_protocol
from .tokens import ServerAccess, with_new_token

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
    valid token if ``token``, any hub user's login if ``users``, members of ``groups``, and
    if ``shared`` the login of whoever the hub lets access the server (asked by the sidecar)."""

    access: str  # public | disabled | restricted
    token: bool = False
    users: bool = False
    groups: tuple[str, ...] = ()
    shared: bool = False

    @property
    def who(self) -> list[str]:
        """Who gets in, in words for the token API and the page."""
        if self.access != "restricted":
            return ["anyone"] if self.access == "public" else []
        groups = [GROUP_PREFIX + g for g in self.groups]
        shared = ["shared"] if self.shared else []
        return ["owner", *(["token"] if self.token else []), *(["users"] if self.users else []), *shared, *groups]


def port_rule(spec: PortSpec, access: ServerAccess) -> PortRule:
    """The rule of one port, from its choice and the server's token mode."""
    choice = port_choice(spec, access)
    if not takes_token(choice):  # public, disabled, owner
        return PortRule("restricted" if choice == "owner" else choice)
    if access.mode == "allow_all":  # server, users, shared, group: the token mode lets anyone in
        return PortRule("public")
    token = access.mode == "token"
    if choice == "users":
        return PortRule("restricted", token=token, users=True)
    if choice == "shared":
        return PortRule("restricted", token=token, shared=True)
    if choice.startswith(GROUP_PREFIX):
        return PortRule("restricted", token=token, groups=(choice[len(GROUP_PREFIX) :],))
    return PortRule("restricted", token=token)  # server


@dataclass(frozen=True)
class PortRoute:
    """The wanted state of one port's route in CHP and (unless direct) in the sidecar."""

    routespec: str
    chp: dict
    sidecar: RouteEntry | RangesEntry | None


def differs(actual: dict | None, want: dict) -> bool:
    """Whether a route as a table holds it lacks or contradicts what is wanted."""
    return actual is None or any(actual.get(k) != v for k, v in want.items())


async def table_changes(table: dict, want: dict[str, dict], keep: set[str]) -> tuple[dict, list]:
    """What a route table needs to hold ``want``: (routes to add, routespecs to delete);
    routes in ``keep`` are left as they are."""
    adds = {}
    for count, (spec, data) in enumerate(want.items(), 1):
        if differs(table.get(spec), data):
            adds[spec] = data
        if count % ENTRIES_PER_YIELD == 0:
            await asyncio.sleep(0)  # let the hub serve requests in between
    return adds, [s for s in table if s not in want and s not in keep]


class RouteManager:
    """Keeps the proxy's and the sidecar's tables in line with the running servers."""

    def __init__(
        self,
        settings: PortRoutes,
        base_url: str,
        proxy_table: RouteTable,
        log: logging.Logger,
        reserved_ports=dict,
        *,
        store: AccessStore | None,
        audit: AuditLog | None,
        sidecar: SidecarReplicas | None,
        subdomain_host: str = "",
        hub_domain: str = "",
        subdomain_hook=subdomain_hook_idna,
        hub_cookies_at_root: bool = False,
        hub_servers=None,
        direct_routes: bool = True,
    ):
        """``store``, ``audit``, ``sidecar``: the settings' store, the audit log and the
        sidecar replicas (None where a caller needs none of them: a test of the routes
        alone). ``reserved_ports()``: the hub's, the proxy's and the sidecar's ports (what they
        are), never routed on the hub's machine. ``subdomain_host``, ``subdomain_hook``:
        JupyterHub's (CHP routes by host: a path route lives on ``hub_domain``, the hub's
        own host). ``hub_cookies_at_root``: the hub's cookies have path ``/``
        (JupyterHub's ``cookie_host_prefix_enabled``), so a path on its host is no place
        for a direct route. ``hub_servers()``: the users and the (user, named server) pairs
        in the hub's database, for finding settings whose server is gone. ``direct_routes``:
        public ports may go straight from the proxy to the app (False: the proxy reports no
        activity per route, so every port goes through the sidecar, which records it)."""
        self.direct_routes = direct_routes
        self.hub_cookies_at_root = hub_cookies_at_root
        self.hub_servers = hub_servers
        self.settings = settings
        self.subdomain_host = subdomain_host
        self.host_routing = bool(subdomain_host)
        self.hub_domain = hub_domain
        self.reserved_ports = reserved_ports
        self._logged: set = set()
        self.base_url = base_url
        settings.check_together()
        self.specs = settings.port_specs
        self.single_ports = [spec for spec in self.specs if not spec.is_range]
        self.port_ranges = [spec for spec in self.specs if spec.is_range]
        self.template = RouteTemplate(settings.route_template, domain=urlsplit(subdomain_host).hostname or "")
        problem = self.template.hub_problem(subdomain_host, subdomain_hook)
        if problem:
            raise TraitError(problem)
        self.log = log
        self.store = store
        self.audit = audit
        self.proxy_table = proxy_table
        self.sidecar = sidecar
        self._reconcile_lock = asyncio.Lock()  # one reconciliation, or one settings change, at a time
        self.policy = Policy(settings, log)
        self.listening = ListeningReports()  # what the servers' in-server parts report

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

    async def limits(self, user, servername: str) -> Limits:
        """What the admin's policy lets ``user`` set on the server."""
        startup = self.behavior(user.spawners[servername], "default_startup_behavior")
        return await self.policy.limits(user, servername, self.specs, startup)

    async def narrow(self, user, servername: str, access: ServerAccess) -> ServerAccess:
        """``access`` within the admin's policy: settings it no longer allows are narrowed
        (``policy.py``), stored, logged and audited."""
        if not self.policy.active:
            return access
        limits = await self.limits(user, servername)
        narrowed, changes = await self.policy.narrowed(access, limits, self.specs)
        if not changes:
            return access
        latest = self.store.get(user.name, servername)
        if latest is not None and latest != access:  # changed meanwhile: narrow what is stored now
            narrowed, changes = await self.policy.narrowed(latest, limits, self.specs)
            if not changes:
                return latest
        self.store.put(user.name, servername, narrowed)
        what = ", ".join(
            [f"mode {a} -> {b}" for a, b in [changes["mode"]] if "mode" in changes]
            + [f"port {port} {a} -> {b}" for port, (a, b) in changes.get("ports", {}).items()]
        )
        self.log.warning(
            "jhproxy-routes: settings of %s/%s narrowed to the policy: %s", shown(user.name), shown(servername), shown(what)
        )
        self.audit.record("settings narrowed", user=user.name, server=servername, by="policy", **changes)
        return narrowed

    async def forget(self, gone: dict[tuple[str, str | None], str]) -> None:
        """Delete the settings of servers that no longer exist (servername ``None``: all of
        the user's), ``{(username, servername): why}``; each deletion is audited."""
        deleted = await asyncio.to_thread(self.store.delete, list(gone))
        for username, servername in deleted:
            why = gone.get((username, servername)) or gone.get((username, None))
            self.log.info("jhproxy-routes: settings of %s/%s deleted: %s", shown(username), shown(servername), why)
            self.audit.record("settings deleted", user=username, server=servername, why=why)

    async def rename_user(self, old: str, new: str) -> None:
        """A user was renamed: their settings follow them (a new user of the old name starts
        afresh, never with the old token or public ports)."""
        moved = await asyncio.to_thread(self.store.rename_user, old, new)
        if moved:
            self.log.info("jhproxy-routes: settings of %i server(s) moved from %s to %s (renamed)", moved, shown(old), shown(new))
            self.audit.record("settings moved", user=new, previous_name=old, servers=moved, why="the user was renamed")

    async def orphans(self, stored) -> dict[tuple[str, str], str]:
        """The stored settings whose user or named server the hub's database no longer has
        (deleted while the hub was down), and why."""
        users, servers = self.hub_servers()
        gone = {}
        for count, (username, servername) in enumerate(list(stored), 1):
            if count % SERVERS_PER_YIELD == 0:
                await asyncio.sleep(0)
            if username not in users:
                gone[username, servername] = "the user no longer exists"
            elif servername and (username, servername) not in servers:
                gone[username, servername] = "the server no longer exists"
        return gone

    # ---- wanted routes ---------------------------------------------------------------
    def routespec(self, username: str, servername: str, port: int) -> str:
        return self._place(self.template.render(username, servername, port))

    def ranges_routespec(self, username: str, servername: str) -> str:
        """The one route of all port ranges of a server."""
        return self._place(self.template.render_prefix(username, servername))

    def _place(self, rendered: str) -> str:
        """Where a rendered template lives: a path below ``base_url``, on the hub's own host
        when CHP routes by host; a host template's routespec as it is."""
        if self.template.by_host:
            return rendered
        path = url_path_join(self.base_url, rendered)
        return self.hub_domain + path if self.host_routing else path

    def public_url(self, routespec: str, origin: str) -> str:
        """The URL of a route for a browser: ``origin`` (the hub's, scheme://host[:port])
        and the path; under ``subdomain_host`` its scheme and port with the route's host."""
        if not self.host_routing:
            return url_path_join(origin, routespec)
        public = urlsplit(self.subdomain_host)
        host, _, path = routespec.partition("/")
        return f"{public.scheme}://{host}{f':{public.port}' if public.port else ''}/{path}"

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
            targets, uid = await port_targets(
                spawner, [s.port for s in self.specs], self.settings.allow_shared_host, self.settings.server_uid
            )
        except SharedHostError as e:
            self.log.error("jhproxy-routes: no port routes for %s/%s: %s", shown(user.name), shown(servername), shown(e))
            return {}
        never = self._never_routed(spawner, targets)
        server = f"{user.name}/{servername}"
        found = self.unreachable(user.name, servername, spawner)
        routes = {}
        for spec in self.single_ports:
            if spec.port in never:
                self._log_once(
                    logging.ERROR,
                    (server, spec.port),
                    "port %i of %s is %s: no route (take it out of c.PortRoutes.ports)",
                    spec.port,
                    server,
                    never[spec.port],
                )
                continue
            if spec.port not in targets:
                self._log_once(
                    logging.WARNING, (server, spec.port), "port %i of %s has no address (not published)", spec.port, server
                )
                continue
            routespec = self.routespec(user.name, servername, spec.port)
            app = with_protocol(targets[spec.port], spec.protocol)
            who = self._who(user.name, servername, spec.port)
            if self._direct(routespec, spec, access, uid) and spec.port not in found:
                routes[routespec] = PortRoute(routespec, {"target": app, **who}, None)
                continue
            sidecar = RouteEntry(target=app, **self._sidecar_rule(spec, access, uid), **who, found=found.get(spec.port, ""))
            routes[routespec] = PortRoute(routespec, {"target": self.settings.sidecar_url, **who}, sidecar)
        if self.port_ranges:
            ranges = self._ranges_route(user.name, servername, never, targets, access, uid)
            if ranges is not None:
                routes[ranges.routespec] = ranges
        return routes

    def unreachable(self, username: str, servername: str, spawner) -> dict[int, str]:
        """The allowed ports of a running server where its in-server part reports an app
        that the route cannot reach (on loopback only, in a network of its own, not
        relayed), with what was found in words: their routes go through the sidecar, whose
        page says it to a visitor."""
        report = self.listening.current(username, servername, started_at(spawner))
        if not report or not has_own_network(spawner):
            return {}
        relay = "" if self.settings.loopback_relay else "; this hub does not relay to such apps"
        return {
            port: f"{entry['process'] or 'an app'} listens on 127.0.0.1 only, where the proxy cannot reach it{relay}:"
            " start it on all interfaces (for example --host 0.0.0.0), then reload"
            for port, entry in report.items()
            if entry["loopback_only"] and not entry["relayed"]
        }

    def _never_routed(self, spawner, targets: dict[int, str]) -> dict[int, str]:
        """Allowed ports of a server that never get a route, and why: the Jupyter server's
        own (its route would open the whole server to the port's token); and a port whose
        target is one of the hub's, the proxy's or the sidecar's own ports on the hub's
        machine (``reserved_ports``). A DockerSpawner's published port 8000 is some other
        port of the host, and is routed; a local server's 8000 is the proxy's."""
        never = {spawner.port: "its Jupyter server's own port"}
        on_hub_machine = {port: urlsplit(t).port for port, t in targets.items() if is_hub_machine(urlsplit(t).hostname)}
        if on_hub_machine:  # a local server (or published ports): the hub's own are there too
            reserved = self.reserved_ports()
            never.update({port: reserved[at] for port, at in on_hub_machine.items() if at in reserved})
            never.update({p: what for p, what in reserved.items() if any(s.covers(p) for s in self.port_ranges)})
        return never

    def _log_once(self, level: int, key, message: str, *args) -> None:
        """Log what every reconciliation would find again only the first time."""
        if key not in self._logged:
            self._logged.add(key)
            self.log.log(level, "jhproxy-routes: " + message, *(shown(a) if isinstance(a, str) else a for a in args))

    @staticmethod
    def _who(username: str, servername: str, port) -> dict:
        """The route data that names its server and port (also for the route list)."""
        return {"username": username, "servername": servername, "port": port}

    def _sidecar_rule(self, spec: PortSpec, access: ServerAccess, uid: int | None) -> dict:
        """What the sidecar checks on a port (or range), and how it forwards: the fields of
        its entry's :class:`~.contract.PortCheck` but the target (``uid``: whose listener
        the app's must be, on a shared host)."""
        rule = port_rule(spec, access)
        return {
            "access": rule.access,
            "token_sha256": access.token_sha256 if rule.token else None,
            "token_expires": access.expires(self.settings.token_max_age) if rule.token else None,
            "users": rule.users,
            "groups": rule.groups,
            "shared": rule.shared,
            "cors_origins": tuple(spec.cors_origins or self.settings.cors_origins),
            "strip_prefix": spec.strip_prefix,
            "activity": self.settings.counts_activity(spec),
            "scope_cookies": self.settings.scopes_cookies(spec) and not self.template.by_host,
            "by_host": self.host_routing,
            "uid": uid,
        }

    def _ranges_route(
        self, username: str, servername: str, never: dict[int, str], targets: dict, access, uid: int | None
    ) -> PortRoute | None:
        """The one route of a server's port ranges: to the sidecar, which reads the port
        from the path. Ports that are never routed are left out of the ranges."""
        ranges = []
        for spec in self.port_ranges:
            if spec.port not in targets:  # DockerSpawner's host-binding mode publishes single ports only
                self._log_once(
                    logging.WARNING,
                    (username, servername, spec.key),
                    "port range %s of %s/%s: the server has no address of its own"
                    " (DockerSpawner needs use_internal_ip for ranges)",
                    spec.key,
                    username,
                    servername,
                )
                continue
            target = with_protocol(targets[spec.port], spec.protocol)
            ranges.append(PortRange(target=target, last=spec.last, **self._sidecar_rule(spec, access, uid)))
        if not ranges:
            return None
        routespec = self.ranges_routespec(username, servername)
        who = self._who(username, servername, ", ".join(s.key for s in self.port_ranges))
        sidecar = RangesEntry(
            ranges=tuple(ranges),
            allowed=", ".join(spec.key for spec in self.specs),
            excluded=tuple(sorted(p for p in never if any(spec.covers(p) for spec in self.port_ranges))),
            **who,
            by_host=self.host_routing,
        )
        return PortRoute(routespec, {"target": self.settings.sidecar_url, **who}, sidecar)

    def _direct(self, routespec: str, spec: PortSpec, access: ServerAccess, uid: int | None) -> bool:
        """A port set ``public`` goes straight to the app, untouched, where no cookie needs
        stripping (a port's own host gets none but ``jupyterhub-session-id``, as any path
        outside the hub's; with ``hub_cookies_at_root`` every path on the hub's host gets
        the hub's login), and where no listener's owner needs checking (``uid``: a server on
        a shared host, where only the sidecar can tell its app from another user's on the
        port). A server in ``allow_all`` mode still goes through the sidecar, which answers
        CORS for it as for a token (as jhproxy did). An app that serves TLS itself
        (``protocol`` ``https``) is reached by the sidecar alone: the proxy would verify its
        certificate (usually self-signed), and CHP's ``--insecure`` is for every target."""
        path = routespec[routespec.index("/") :]  # without the host (host routing)
        on_hub_host = not self.template.by_host
        under_cookies = (on_hub_host and self.hub_cookies_at_root) or any(
            path.startswith(self.base_url + p) for p in COOKIE_PATHS
        )
        return (
            port_choice(spec, access) == "public"
            and uid is None
            and self.direct_routes
            and self.settings.direct_public_routes
            and not spec.strip_prefix
            and spec.protocol == "http"
            and not (on_hub_host and self.settings.scopes_cookies(spec))  # the sidecar rewrites its cookies
            and not under_cookies
        )

    # ---- one server ------------------------------------------------------------------
    async def server_started(self, user, servername: str) -> None:
        access = await self.narrow(user, servername, await self.access_for(user, servername))
        await self.apply(user, servername, access)
        # changed meanwhile (the server was not ready yet: the change only withdrew its routes)
        latest = await asyncio.to_thread(self.store.get, user.name, servername)
        if latest is not None and latest != access:
            await self.apply(user, servername, latest)

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

    async def apply_change(self, user, servername: str, access: ServerAccess) -> None:
        """``apply`` for settings just changed, after any reconciliation in progress: one
        that read the settings before the change would otherwise write them back over it
        (until its next pass: a port set public could meanwhile go to a sidecar that had
        already forgotten it)."""
        async with self._reconcile_lock:
            await self.apply(user, servername, access)

    async def _apply_route(self, route: PortRoute) -> None:
        if route.sidecar is not None:
            await self.sidecar.add(route.routespec, route.sidecar.to_json())
            await self.proxy_table.add(route.routespec, route.chp)
        else:
            await self.proxy_table.add(route.routespec, route.chp)
            await self.sidecar.delete(route.routespec)

    async def server_stopped(self, user, servername: str) -> None:
        """Remove a server's port routes and apply ``shutdown_behavior``."""
        if self.behavior(user.spawners[servername], "shutdown_behavior") == "disable":
            access = self.store.get(user.name, servername)
            if access is not None and access.mode != "disabled":
                self.store.put(user.name, servername, access.disabled())
        await self.withdraw(user.name, servername)

    async def withdraw(self, username: str, servername: str) -> None:
        """Remove a server's port routes, from CHP first (raises RouteAPIError). For a server
        that stops, or whose settings change while it is not ready (starting, stopping): no
        route outlives its settings; ``add_user`` routes the server again once it is ready.
        The sidecar forgets them even when the proxy failed: a route the proxy still has
        then ends at the sidecar's 503, closed."""
        specs = self.server_routespecs(username, servername)  # none for a server without routes
        try:
            await asyncio.gather(*(self.proxy_table.delete(s) for s in specs))
        finally:
            await asyncio.gather(*(self.sidecar.delete(s) for s in specs))

    # ---- everything --------------------------------------------------------------------
    @property
    def reconciling(self) -> bool:
        return self._reconcile_lock.locked()

    async def reconcile(self, users) -> None:
        """Compare wanted and actual routes of all servers; add the missing, drop the stale."""
        async with self._reconcile_lock:
            try:
                with RECONCILE_DURATION.time():
                    await self._reconcile(users)
            except RouteAPIError as e:
                RECONCILE_ERRORS.inc()
                self.log.error("jhproxy-routes: reconciliation failed, will retry: %s", shown(e))
            except Exception:  # a bug: logged and counted, never a task's unretrieved exception
                RECONCILE_ERRORS.inc()
                self.log.exception("jhproxy-routes: reconciliation failed, will retry")

    async def _reconcile(self, users) -> None:
        # one read of the store, and one write for servers seen for the first time: a query
        # or a commit per server would take minutes for ten thousand of them
        stored = await asyncio.to_thread(self.store.all)
        if self.hub_servers is not None:  # read after the store: a server in it existed before
            gone = await self.orphans(stored)
            if gone:
                await self.forget(gone)
                for key in gone:
                    del stored[key]
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
                    stored[key] = await self.narrow(user, servername, stored[key])
                    wanted.update(await self.wanted_routes(user, servername, stored[key]))
                    continue
            except TargetsPending as e:
                self.log.info(
                    "jhproxy-routes: routes of %s/%s left as they are: %s", shown(user.name), shown(servername), shown(e)
                )
            except Exception:  # one server's failure (its spawner, a bug) must not stop the others'
                RECONCILE_ERRORS.inc()
                self.log.exception(
                    "jhproxy-routes: routes of %s/%s left as they are, will retry", shown(user.name), shown(servername)
                )
            keep.update(self.server_routespecs(user.name, servername))
        if first_seen:
            await asyncio.to_thread(self.store.add_missing, first_seen)
        await self._sync_tables(wanted, keep)
        direct = sum(r.sidecar is None for r in wanted.values())
        ROUTES.labels("direct").set(direct)
        ROUTES.labels("sidecar").set(len(wanted) - direct)

    async def _sync_tables(self, wanted: dict[str, PortRoute], keep: set[str]) -> None:
        """Make CHP's and every sidecar replica's table the wanted ones (routes in ``keep``
        left as they are): the replicas learn new routes before CHP, and forget old ones
        after it. A replica that fails a step is left out of the rest of the pass."""
        replicas = await self.sidecar.replicas()  # one snapshot for the whole pass
        chp_routes, tables = await asyncio.gather(
            self.proxy_table.get_all(), self.sidecar.each(replicas, lambda api: api.get_all())
        )
        chp_adds, chp_stale = await table_changes(chp_routes, {s: r.chp for s, r in wanted.items()}, keep)
        sidecar_want = {s: r.sidecar.to_json() for s, r in wanted.items() if r.sidecar is not None}
        changes = {api: await table_changes(table, sidecar_want, keep) for api, table in tables.items()}
        self._log_changes("sidecar", "adding", {s for adds, _ in changes.values() for s in adds})
        self._log_changes("proxy", "adding", chp_adds)
        done = await self.sidecar.each(list(changes), lambda api: api.add_many(changes[api][0]))
        RECONCILE_FIXES.labels("sidecar", "added").inc(sum(len(changes[api][0]) for api in done))
        await self.proxy_table.add_many(chp_adds)
        RECONCILE_FIXES.labels("proxy", "added").inc(len(chp_adds))
        self._log_changes("proxy", "removing stale", chp_stale)
        await self.proxy_table.delete_many(chp_stale)
        RECONCILE_FIXES.labels("proxy", "removed").inc(len(chp_stale))
        self._log_changes("sidecar", "removing stale", {s for api in done for s in changes[api][1]})
        done = await self.sidecar.each(list(done), lambda api: api.delete_many(changes[api][1]))
        RECONCILE_FIXES.labels("sidecar", "removed").inc(sum(len(changes[api][1]) for api in done))
        marked = await self.sidecar.mark_complete(list(done))
        if len(marked) < len(replicas) or not replicas:
            RECONCILE_ERRORS.inc()  # a replica left out: this pass failed for it

    def _log_changes(self, table: str, doing: str, routespecs) -> None:
        if len(routespecs) > 20:
            self.log.info("jhproxy-routes: %s %i %s routes", doing, len(routespecs), table)
        else:
            for s in routespecs:
                self.log.info("jhproxy-routes: %s %s route %s", doing, table, shown(s))

    def _routed_servers(self, users):
        """(user, servername, spawner) of every server that is ready or in transition."""
        for user in list(users.values()):
            for servername, spawner in list(user.spawners.items()):
                if (spawner.ready or spawner.pending) and self.template.serves(user.name, servername):
                    yield user, servername, spawner
