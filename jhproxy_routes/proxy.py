"""``PortRoutesMixin``: the port routes in whatever proxy class the hub runs, and
``PortRoutesProxy``: JupyterHub's ConfigurableHTTPProxy with it (``traefik.py`` has
jupyterhub-traefik-proxy's file provider with it). A proxy class of ours is the mixin before
the hub's own class, and says how to reach the proxy's route table (``make_route_table``),
which ports the proxy listens on (``proxy_ports``), and whether a public port may go
straight to its app (``direct_routes``: only where the proxy reports each route's activity).

Why a proxy subclass and not spawner hooks: JupyterHub calls the proxy at exactly the
moments that matter, whatever the spawner: ``add_user`` when a server is ready and routed
(its address is known), ``delete_user`` when it is unrouted, ``check_routes`` at start-up and
every ``last_activity_interval``, ``restore_routes`` after it restarted a crashed CHP. Spawner
hooks fire before the address is known (``pre_spawn_hook``) or only when a client watches
the spawn (``progress_ready_hook``).

A port-route failure, expected or not, is logged (with the server's name), counted and left
to the next reconciliation; it never fails a spawn, and every wait on CHP or the sidecar is
bounded (``PortRoutes.api_retry_timeout``). On CHP the route manager follows the proxy when
the hub is moved to another one (``PATCH /hub/api/proxy`` sets ``api_url`` and ``auth_token``).
"""

from __future__ import annotations

import asyncio
import gc

from jupyterhub import orm
from jupyterhub.proxy import ConfigurableHTTPProxy
from sqlalchemy import event
from tornado.ioloop import PeriodicCallback
from traitlets import observe

from .activity import ActivityCollector
from .audit import AuditLog
from .config import PortRoutes, listening_ports
from .errors import TargetsPending
from .hub_cookies import plain_http_warning, use_host_prefix
from .logsafe import shown
from .metrics import SERVER_UPDATE_ERRORS
from .replicas import SidecarReplicas
from .routeapi import RouteAPI, RouteAPIError
from .routes import RouteManager
from .routetable import RouteTable
from .settings import PortSettings
from .store import AccessStore
from .wiring import user_role_scopes, user_scopes_problem, wire_into_hub


def freeze_startup_objects() -> int:
    """Leave what exists now (the hub as started) to reference counting alone: later full
    garbage collections walk only newer objects (``PortRoutes.freeze_gc_at_startup``). How
    many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class PortRoutesMixin:
    """One extra route per allowed port of each running server, in the hub's proxy; mixed in
    before a JupyterHub ``Proxy`` class."""

    #: public ports may go straight from the proxy to the app (the proxy reports activity per route)
    direct_routes = True

    def make_route_table(self) -> RouteTable:
        """The proxy's route table, for the route manager."""
        raise NotImplementedError

    def proxy_ports(self) -> dict[str, str]:
        """``{url: what}`` of every address the proxy itself listens on."""
        raise NotImplementedError

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.port_routes = PortRoutes(parent=self)
        # before anything reads it: the hub's login cookies as host templates need them
        use_host_prefix(self.app, self.port_routes.template)
        if warning := plain_http_warning(self.port_routes.template, self.app.subdomain_host):
            self.log.warning("jhproxy-routes: %s", warning)
        self.route_manager = RouteManager(
            self.port_routes,
            self.app.base_url,
            self.make_route_table(),
            self.log,
            self.own_ports,
            subdomain_host=self.app.subdomain_host,
            hub_domain=self.app.domain,
            subdomain_hook=self.app.subdomain_hook,
            hub_cookies_at_root=self.app.cookie_host_prefix_enabled,
            hub_servers=self.hub_servers,
            store=AccessStore(self.port_routes.db_url),
            audit=AuditLog(self.port_routes.audit_log_path),
            sidecar=SidecarReplicas.from_settings(self.port_routes, self.log, self.host_routing),
            direct_routes=self.direct_routes,
        )
        self.port_settings = PortSettings(self.route_manager)
        self.activity = ActivityCollector(self.route_manager, lambda: self.db, self.log)
        self._reconcile_callback = None
        self._gc_frozen = False
        self._checked_roles = False  # the user role's scopes, checked at the first check_routes
        self._tasks: set[asyncio.Task] = set()  # background work, kept until done
        self._deleted: dict[tuple[str, str | None], str] = {}  # deleted in the hub's database, to forget
        event.listen(orm.User, "after_delete", self._on_delete)
        event.listen(orm.Spawner, "after_delete", self._on_delete)
        self._renamed: dict[str, tuple[str, int]] = {}  # old user name -> (new, user id), to move the settings along
        event.listen(orm.User.name, "set", self._on_rename)
        wire_into_hub(self.app, self.port_routes)

    def own_ports(self) -> dict[int, str]:
        """The ports the hub, the proxy and the sidecar listen on (as bound, also with
        ``bind_url``/``hub_bind_url``): never a port route's target on the hub's machine."""
        return listening_ports(
            {
                **self.proxy_ports(),
                self.app.hub.bind_url if self.app.hub else "": "the hub's port",
                self.port_routes.sidecar_url: "the sidecar's port",
            }
        )

    def hub_servers(self) -> tuple[set[str], set[tuple[str, str]]]:
        """The users, and (user, server) of every named server, in the hub's database (one query)."""
        users, servers = set(), set()
        for username, servername in self.app.db.query(orm.User.name, orm.Spawner.name).outerjoin(orm.User._orm_spawners):
            users.add(username)
            if servername:
                servers.add((username, servername))
        return users, servers

    def _on_delete(self, mapper, connection, target) -> None:
        """A user or a named server was deleted from the hub's database (in the hub's flush):
        its port settings go too, once the deletion is committed, so that a new user or
        server of that name never inherits its token or its public ports."""
        if isinstance(target, orm.User):
            self._deleted[target.name, None] = "the user was deleted"
        else:
            user = target.__dict__.get("user")  # never load inside a flush; a user's deletion covers the rest
            if user is None or not target.name:
                return
            self._deleted[user.name, target.name] = "the server was deleted"
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script using the hub's database): reconciliation will find them
            return
        self._background(self._forget_deleted(), "forgetting deleted servers' settings")

    def _on_rename(self, target, value, old, initiator) -> None:
        """A user's name changes (``PATCH /hub/api/users/<name>``): once committed, their
        port settings move with them."""
        if not isinstance(old, str) or old == value:
            return  # a new user's first name
        self._renamed[old] = (value, target.id)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._background(self._move_renamed(), "moving renamed users' settings")

    async def _move_renamed(self) -> None:
        renamed, self._renamed = self._renamed, {}
        db = self.app.db
        for old, (new, user_id) in renamed.items():  # after the hub's commit; a rolled-back rename left them
            user = orm.User.find(db, new)
            if user is not None and user.id == user_id:
                await self.route_manager.rename_user(old, new)

    async def _forget_deleted(self) -> None:
        deleted, self._deleted = self._deleted, {}
        db = self.app.db
        # after the hub's commit (this runs once its handler yields); a rolled-back deletion left them
        gone = {}
        for (username, servername), why in deleted.items():
            if servername is not None and (username, None) in deleted:
                continue  # a server of a deleted user: the user's why
            user = orm.User.find(db, username)
            if user is None or (servername is not None and servername not in user.orm_spawners):
                gone[username, servername] = why
        if gone:
            await self.route_manager.forget(gone)

    async def add_user(self, user, server_name=""):
        await super().add_user(user, server_name)
        try:
            await self.route_manager.server_started(user, server_name)
        except Exception as e:  # never fail the spawn
            self._server_update_failed("start", f"{shown(user.name)}/{shown(server_name)}", e)

    async def delete_user(self, user, server_name=""):
        try:
            await self.route_manager.server_stopped(user, server_name)
        except Exception as e:
            self._server_update_failed("stop", f"{shown(user.name)}/{shown(server_name)}", e)
        await super().delete_user(user, server_name)

    def _server_update_failed(self, event: str, server: str, error: Exception) -> None:
        """Count and log a failed update of one server's routes (the traceback of an
        unexpected error); the next reconciliation tries again."""
        SERVER_UPDATE_ERRORS.labels(event).inc()
        expected = isinstance(error, (RouteAPIError, TargetsPending))
        self.log.error(
            "jhproxy-routes: port routes of %s not %s yet, left to the next reconciliation: %s",
            server,
            "added" if event == "start" else "removed",
            shown(error),
            exc_info=None if expected else error,
        )

    async def check_routes(self, user_dict, service_dict, routes=None):
        """At start-up, and every ``last_activity_interval`` right after the hub's own
        activity update: reconcile, and collect the ports' activity."""
        await super().check_routes(user_dict, service_dict, routes)
        if not self._checked_roles:  # a proxy the hub does not start: services may be running
            await self._refuse_without_user_scopes(cleanup=True)
        if self.port_routes.freeze_gc_at_startup and not self._gc_frozen:
            frozen = freeze_startup_objects()
            self._gc_frozen = True
            self.log.info(
                "jhproxy-routes: %i objects of the hub's start-up left to reference counting (freeze_gc_at_startup)", frozen
            )
        # in the background: a slow or absent sidecar must not hold up the hub's start-up
        self._background(self.route_manager.reconcile(user_dict), "reconciliation")
        if not self.activity.collecting:
            self._background(self.activity.collect(user_dict), "activity collection")
        self._start_periodic_reconcile(user_dict)

    async def start(self):
        """Before the proxy starts (nothing runs yet), refuse a hub whose users lack scopes."""
        await self._refuse_without_user_scopes()
        await super().start()

    async def _refuse_without_user_scopes(self, cleanup: bool = False) -> None:
        """Stop the hub at start-up if its ``user`` role lacks a scope users need: every
        port login and every user's token API would fail with 403 otherwise. ``cleanup``:
        stop what the hub started first (its services, its proxy)."""
        self._checked_roles = True
        problem = user_scopes_problem(user_role_scopes(self.db))
        if problem:
            self.log.critical("jhproxy-routes: %s", problem)
            if cleanup:
                await self.app.cleanup()
            self.app.exit(1)

    def _background(self, coroutine, what: str) -> None:
        """Run ``coroutine`` as a task that is kept until it ends and whose failure is logged."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)

        def done(task):
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self.log.error("jhproxy-routes: %s failed", what, exc_info=task.exception())

        task.add_done_callback(done)

    async def restore_routes(self):
        """After the hub restarted a crashed proxy (CHP): its routes, then ours."""
        await super().restore_routes()
        await self.route_manager.reconcile(self.app.users)

    def _start_periodic_reconcile(self, user_dict):
        interval = self.port_routes.reconcile_interval
        if self._reconcile_callback is not None or not interval:
            return

        def run():
            if not self.route_manager.reconciling:  # a slow pass: skip this turn, never queue up
                self._background(self.route_manager.reconcile(user_dict), "reconciliation")

        self._reconcile_callback = PeriodicCallback(run, 1e3 * interval)
        self._reconcile_callback.start()

    def stop(self):
        if self._reconcile_callback is not None:
            self._reconcile_callback.stop()
        return super().stop()  # a coroutine for Traefik's proxy


class PortRoutesProxy(PortRoutesMixin, ConfigurableHTTPProxy):
    """configurable-http-proxy with one extra route per allowed port of each running server."""

    def make_route_table(self) -> RouteAPI:
        return RouteAPI(
            "proxy",
            self.api_url,
            self.auth_token,
            timeout=self.port_routes.api_timeout,
            retry_timeout=self.port_routes.api_retry_timeout,
            concurrency=self.port_routes.concurrency,
            log=self.log,
            host_routing=self.host_routing,
        )

    def proxy_ports(self) -> dict[str, str]:
        return {self.public_url: "the proxy's public port", self.api_url: "the proxy's API"}

    @observe("api_url", "auth_token")
    def _follow_proxy(self, change):
        """The hub was moved to another proxy: port routes go there too, at once."""
        if hasattr(self, "route_manager"):
            self.route_manager.proxy_table.retarget(self.api_url, self.auth_token)
