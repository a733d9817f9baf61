"""``PortRoutesProxy``: JupyterHub's ConfigurableHTTPProxy, plus the port routes.

Why a proxy subclass and not spawner hooks: JupyterHub calls the proxy at exactly the
moments that matter, whatever the spawner: ``add_user`` when a server is ready and routed
(its address is known), ``delete_user`` when it is unrouted, ``check_routes`` at start-up and
every ``last_activity_interval``, ``restore_routes`` after it restarted a crashed CHP. Spawner
hooks fire before the address is known (``pre_spawn_hook``) or only when a client watches
the spawn (``progress_ready_hook``).

A port-route failure is logged and left to the next reconciliation; it never fails a spawn,
and every wait on CHP or the sidecar is bounded (``PortRoutes.api_retry_timeout``).
"""

from __future__ import annotations

import asyncio

from jupyterhub.proxy import ConfigurableHTTPProxy
from tornado.ioloop import PeriodicCallback

from .activity import ActivityCollector
from .config import PortRoutes, listening_ports
from .metrics import SERVER_UPDATE_ERRORS
from .routeapi import RouteAPI, RouteAPIError
from .routes import RouteManager
from .targets import TargetsPending
from .wiring import wire_into_hub


class PortRoutesProxy(ConfigurableHTTPProxy):
    """configurable-http-proxy with one extra route per allowed port of each running server."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.port_routes = PortRoutes(parent=self)
        chp_api = RouteAPI(
            "proxy",
            self.api_url,
            self.auth_token,
            timeout=self.port_routes.api_timeout,
            retry_timeout=self.port_routes.api_retry_timeout,
            concurrency=self.port_routes.concurrency,
            log=self.log,
            host_routing=self.host_routing,
        )
        self.route_manager = RouteManager(
            self.port_routes, self.app.base_url, chp_api, self.log, self.own_ports,
            subdomain_host=self.app.subdomain_host, hub_domain=self.app.domain, subdomain_hook=self.app.subdomain_hook,
            hub_cookies_at_root=self.app.cookie_host_prefix_enabled,
        )  # fmt: skip
        self.activity = ActivityCollector(self.route_manager, lambda: self.db, self.log)
        self._reconcile_callback = None
        self._background_tasks: set[asyncio.Task] = set()
        wire_into_hub(self.app, self.port_routes)

    def own_ports(self) -> dict[int, str]:
        """The ports the hub, the proxy and the sidecar listen on (as bound, also with
        ``bind_url``/``hub_bind_url``): never a port route's target on the hub's machine."""
        return listening_ports({
            self.public_url: "the proxy's public port",
            self.api_url: "the proxy's API",
            self.app.hub.bind_url if self.app.hub else "": "the hub's port",
            self.port_routes.sidecar_url: "the sidecar's port",
        })  # fmt: skip

    async def add_user(self, user, server_name=""):
        await super().add_user(user, server_name)
        try:
            await self.route_manager.server_started(user, server_name)
        except (RouteAPIError, TargetsPending) as e:
            SERVER_UPDATE_ERRORS.labels("start").inc()
            self.log.error("jhproxy-routes: port routes of %s not added yet: %s", user.name, e)

    async def delete_user(self, user, server_name=""):
        try:
            await self.route_manager.server_stopped(user, server_name)
        except RouteAPIError as e:
            SERVER_UPDATE_ERRORS.labels("stop").inc()
            self.log.error("jhproxy-routes: port routes of %s not removed yet: %s", user.name, e)
        await super().delete_user(user, server_name)

    async def check_routes(self, user_dict, service_dict, routes=None):
        """At start-up, and every ``last_activity_interval`` right after the hub's own
        activity update: reconcile, and collect the ports' activity."""
        await super().check_routes(user_dict, service_dict, routes)
        # in the background: a slow or absent sidecar must not hold up the hub's start-up
        self._in_background(self.route_manager.reconcile(user_dict))
        if not self.activity.collecting:
            self._in_background(self.activity.collect(user_dict))
        self._start_periodic_reconcile(user_dict)

    def _in_background(self, coroutine) -> None:
        """Run ``coroutine`` as a task that is kept until it ends; its failure is logged."""
        task = asyncio.ensure_future(coroutine)
        self._background_tasks.add(task)

        def done(task):
            self._background_tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self.log.error("jhproxy-routes: %s failed", coroutine.__qualname__, exc_info=task.exception())

        task.add_done_callback(done)

    async def restore_routes(self):
        await super().restore_routes()
        await self.route_manager.reconcile(self.app.users)

    def _start_periodic_reconcile(self, user_dict):
        interval = self.port_routes.reconcile_interval
        if self._reconcile_callback is not None or not interval:
            return

        def run():
            if not self.route_manager.reconciling:  # a slow pass: skip this turn, never queue up
                asyncio.ensure_future(self.route_manager.reconcile(user_dict))

        self._reconcile_callback = PeriodicCallback(run, 1e3 * interval)
        self._reconcile_callback.start()

    def stop(self):
        if self._reconcile_callback is not None:
            self._reconcile_callback.stop()
        super().stop()
