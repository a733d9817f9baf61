"""``/hub/proxytoken/``: the token API, compatible with jhproxy, and the page for browsers.

A ``GET`` whose ``Accept`` header asks for ``text/html`` and that carries no
``Authorization`` header (a browser opening the URL) gets the page; every other request
(curl, requests, ``fetch``, the seed's clients: they send ``*/*`` or JSON) gets the API.

``GET /hub/proxytoken/[<servername>]``: the server's token as JSON: the token string,
``""`` (allow all) or ``null`` (disabled). ``?format=full`` gives the whole settings object.

``POST`` with body ``disabled``, ``allow_all`` or ``random`` (plain, or as a JSON string):
the new value as JSON. ``POST`` with a JSON object ``{"mode": ..., "ports": {"5001":
"public"}}`` changes the mode and/or per-port access and answers the settings object.

``?user=<name>`` acts on another user's server (an admin, or the ``jhproxy-routes`` CLI).

``GET /hub/api/jhproxy-routes/routes[?user=<name>]``: every live port route the credential
may see, with its owner, port, target, mode and access.

Auth as for JupyterHub's own API: an API token (``Authorization: token ...``), or the hub
login cookie plus JupyterHub's XSRF token. Either needs the scope
``custom:jhproxy-routes:tokens`` on the server (``!server=<user>/<server>``, or on its owner:
``!user=<user>``), which ``install(c)`` grants to every user for their own servers and to a
server's own token for that server only, or ``tokens`` on the owner (whoever may make the owner's API
tokens can act as the owner anyway: so admins may manage everyone's ports).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.utils import url_path_join
from tornado import web

from .config import PORT_ACCESS, valid_port_access
from .errors import TargetsPending
from .logsafe import shown
from .metrics import SERVER_UPDATE_ERRORS
from .routeapi import RouteAPIError
from .routes import port_choice, port_rule
from .scopes import SCOPE
from .tokens import ServerAccess, TokenUnreadable, read_token, with_new_token

ACTIONS = ("disabled", "allow_all", "random")


def token_handlers():
    return [
        (r"/proxytoken/?(?P<server_name>[^/]*)/?", ProxyTokenRoute),
        (r"/api/jhproxy-routes/routes/?", RouteListHandler),
    ]


def may_manage(handler, username: str, servername: str) -> bool:
    """Whether the request's credential may read and change the port settings of the server
    ``username/servername``: the scope for that server (a user-level grant covers all the
    user's servers; a server's own token has it for that server only), or ``tokens``."""
    return handler.has_scope(f"{SCOPE}!server={username}/{servername}") or handler.has_scope(f"tokens!user={username}")


def route_manager(handler):
    manager = getattr(handler.proxy, "route_manager", None)
    if manager is None:
        raise web.HTTPError(500, "jhproxy-routes is not installed: call jhproxy_routes.install(c).")
    return manager


def wants_page(request) -> bool:
    return request.method == "GET" and "Authorization" not in request.headers and "text/html" in request.headers.get("Accept", "")


class ProxyTokenRoute(web.RequestHandler):
    """The handler of ``/hub/proxytoken/``: the page for a browser, else the API."""

    def __new__(cls, application, request, **kwargs):
        handler = ProxyTokenPageHandler if wants_page(request) else ProxyTokenHandler
        return handler(application, request, **kwargs)


class ProxyTokenPageHandler(BaseHandler):
    """The page where a user sees and controls the ports of their servers. It reads and
    changes them through the API (``ProxyTokenHandler``), with JupyterHub's XSRF token."""

    @web.authenticated
    async def get(self, server_name=""):
        user = self.current_user
        manager = route_manager(self)
        servers = sorted({"", *user.orm_user.orm_spawners})
        html = await self.render_template(
            "jhproxy-routes.html",
            api_url=url_path_join(self.hub.base_url, "proxytoken/"),
            servers=[name for name in servers if manager.template.serves(user.name, name)],
            groups=sorted(g.name for g in user.groups),
        )
        self.finish(html)


class ProxyTokenHandler(APIHandler):
    """Read and change the port token and port access of one of the user's servers."""

    def _target(self, server_name: str):
        """The user and server this request is about (``?user=``, else the credential's
        own), after the scope check."""
        current = self.current_user
        if current is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        name = self.get_argument("user", "")
        if not name:
            if getattr(current, "kind", "user") != "user":
                raise web.HTTPError(403, "This credential is not a user's: name the user with ?user=<name>.")
            name = current.name
        # the scope first: whether a user exists is nobody else's business
        if not may_manage(self, name, server_name):
            raise web.HTTPError(
                403, f"This credential lacks the scope {SCOPE} (or tokens) for the server {shown(name)}/{shown(server_name)}."
            )
        user = current if name == current.name and getattr(current, "kind", "user") == "user" else self.find_user(name)
        if user is None:
            raise web.HTTPError(404, f"No user named {name!r}.")
        if server_name and server_name not in user.orm_user.orm_spawners:
            raise web.HTTPError(404, f"User {user.name} has no server named {server_name!r}.")
        return user, route_manager(self)

    async def get(self, server_name=""):
        user, manager = self._target(server_name)
        access = await manager.access_for(user, server_name)
        if self.get_argument("format", "") == "full":
            self.finish(json.dumps(await self._settings(user, server_name, access)))
        else:
            self.finish(json.dumps(await self._seed_value(access)))

    async def post(self, server_name=""):
        user, manager = self._target(server_name)
        before = await manager.access_for(user, server_name)
        body = self._parse_body()
        new_token = None
        if isinstance(body, dict):
            access, new_token = await self._apply_settings(before, body)
        else:
            access, new_token = await self._apply_action(before, body)
        manager.store.put(user.name, server_name, access)
        actor = self.current_user.name
        self.log.info("jhproxy-routes: %s set %s/%s to mode %s", shown(actor), shown(user.name), shown(server_name), access.mode)
        manager.audit.record(
            "settings changed",
            user=user.name,
            by=actor,
            server=server_name,
            mode=[before.mode, access.mode],
            new_token=new_token is not None,
            ports={p: [before.port_access.get(p), a] for p, a in access.port_access.items() if before.port_access.get(p) != a},
            client=self.request.remote_ip,
            credential="token" if self.get_auth_token() else "login",
        )
        spawner = user.spawners[server_name]
        try:
            if spawner.ready:
                await manager.apply_change(user, server_name, access)
            elif spawner.active:  # starting or stopping: whatever routes it has go at once
                await manager.withdraw(user.name, server_name)
        except (RouteAPIError, TargetsPending) as e:
            SERVER_UPDATE_ERRORS.labels("settings").inc()
            raise web.HTTPError(503, f"Saved, but the proxy could not be updated yet: {e}") from None
        if isinstance(body, dict):
            result = await self._settings(user, server_name, access, new_token)
        else:
            result = new_token if new_token is not None else await self._seed_value(access)
        self.finish(json.dumps(result))

    def _parse_body(self):
        raw = self.request.body.strip()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise web.HTTPError(400, "The body must be UTF-8 text.") from None
        if text in ACTIONS:
            return text
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) or body in ACTIONS:
            return body
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise web.HTTPError(
            400,
            f"Invalid action {shown!r} in the POST body: send one of disabled, allow_all, random,"
            ' or a JSON object such as {"mode": "random", "ports": {"5001": "public"}}.',
        )

    async def _apply_action(self, access: ServerAccess, action: str):
        if action == "disabled":
            return access.disabled(), None
        if action == "allow_all":
            return access.allow_all(), None
        return await with_new_token(access)

    async def _apply_settings(self, access: ServerAccess, body: dict):
        unknown = set(body) - {"mode", "ports"}
        if unknown:
            raise web.HTTPError(400, f"Unknown key(s) {sorted(unknown)}; allowed: mode, ports.")
        new_token = None
        if "mode" in body:
            if body["mode"] not in ACTIONS:
                raise web.HTTPError(400, f"mode must be one of {', '.join(ACTIONS)}.")
            access, new_token = await self._apply_action(access, body["mode"])
        ports = body.get("ports", {})
        if not isinstance(ports, dict):
            raise web.HTTPError(400, 'ports must be an object such as {"5001": "public"}.')
        allowed = {spec.key for spec in route_manager(self).specs}
        port_access = dict(access.port_access)
        for port, value in ports.items():
            if str(port) not in allowed:
                raise web.HTTPError(400, f"Port {shown(port)} is not in the allow-list ({', '.join(sorted(allowed))}).")
            if not valid_port_access(value):
                raise web.HTTPError(400, f"Port {shown(port)}: access must be one of {', '.join(PORT_ACCESS)}, or group:<name>.")
            port_access[str(port)] = value
        return replace(access, port_access=port_access), new_token

    async def _seed_value(self, access: ServerAccess):
        if access.mode == "disabled":
            return None
        if access.mode == "allow_all":
            return ""
        try:
            return await read_token(access)
        except TokenUnreadable as e:
            raise web.HTTPError(409, f"The token cannot be shown: {e}.") from None

    async def _settings(self, user, server_name, access, new_token=None) -> dict:
        manager = route_manager(self)
        token = new_token
        if token is None and access.mode == "token":
            try:
                token = await read_token(access)
            except TokenUnreadable:
                token = None
        # the hub's public URL if set: API calls from inside a server come in at its internal address
        public = self.settings.get("public_url")
        base = f"{public.scheme}://{public.netloc}" if public else f"{self.request.protocol}://{self.request.host}"
        ports = []
        routed = manager.template.serves(user.name, server_name)
        for spec in manager.specs:
            rule = port_rule(spec, access)
            if not routed:
                url = None
            elif spec.is_range:
                url = manager.public_url(manager.ranges_routespec(user.name, server_name), base) + "{port}/"
            else:
                url = manager.public_url(manager.routespec(user.name, server_name, spec.port), base)
            ports.append(
                {
                    "port": spec.key if spec.is_range else spec.port,  # 5000, or "8000-8099"
                    "name": spec.name,
                    "access": port_choice(spec, access),
                    "effective_access": rule.access,
                    "admits": rule.who,
                    "url": url,
                }
            )
        return {
            "user": user.name,
            "server": server_name,
            "running": bool(user.spawners[server_name].ready),
            "mode": access.mode,
            "token": token,
            "token_readable": access.mode != "token" or token is not None,
            "ports": ports,
        }


class RouteListHandler(APIHandler):
    """``GET /hub/api/jhproxy-routes/routes``: the live port routes (those in the proxy) of
    every user the credential holds the scope for, read from the proxy's and the sidecar's
    tables (never from the spawners, which can be slow to ask). The tables are read at most
    every ``ROUTE_LIST_MAX_AGE`` seconds, whoever asks and however often."""

    async def get(self):
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        only = self.get_argument("user", "")
        allowed: dict[tuple[str, str], bool] = {}  # has_scope per server, asked once

        def visible(name: str, server: str) -> bool:
            if (name, server) not in allowed:
                allowed[name, server] = may_manage(self, name, server)
            return (not only or name == only) and allowed[name, server]

        rows = await route_rows(route_manager(self))
        self.finish(json.dumps([row for row in rows if visible(row["user"], row["server"])]))


ROUTE_LIST_MAX_AGE = 5.0
_route_rows: dict = {}  # manager -> (monotonic time, rows)


async def route_rows(manager) -> list[dict]:
    """Every port route in the proxy, as the route list shows it (cached briefly)."""
    read_at, rows = _route_rows.get(manager, (0.0, None))
    if rows is not None and time.monotonic() - read_at < ROUTE_LIST_MAX_AGE:
        return rows
    try:
        chp_routes, sidecar_routes = await asyncio.gather(manager.chp.get_all(), manager.sidecar.get_all())
    except RouteAPIError as e:
        raise web.HTTPError(503, f"The route tables could not be read: {e}") from None
    stored = await asyncio.to_thread(manager.store.all)
    specs = {spec.key: spec for spec in manager.specs}
    rows = []
    for path, data in sorted(chp_routes.items()):
        name, server, port = data.get("username"), data.get("servername", ""), data.get("port")
        if not isinstance(name, str):
            continue
        access = stored.get((name, server), ServerAccess())
        # a range route names its ranges: "8000-8099, 9000-9009"
        port_specs = [specs[key] for key in str(port).split(", ") if key in specs]
        via_sidecar = data.get("target") == manager.settings.sidecar_url
        # the app's address; None for a moment while the sidecar learns the route
        target = (sidecar_routes.get(path, {}) if via_sidecar else data).get("target")
        if via_sidecar and target is None and sidecar_routes.get(path, {}).get("ranges"):
            target = sidecar_routes[path]["ranges"][0]["target"].rsplit(":", 1)[0] + ":{port}"
        rows.append(
            {
                "user": name,
                "server": server,
                "port": port,
                "name": ", ".join(spec.name for spec in port_specs if spec.name),
                "path": path,
                "via": "sidecar" if via_sidecar else "direct",
                "target": target,
                "mode": access.mode,
                "access": ", ".join(port_choice(spec, access) for spec in port_specs) or None,
                "admits": sorted({who for spec in port_specs for who in port_rule(spec, access).who}),
            }
        )
    _route_rows[manager] = (time.monotonic(), rows)
    return rows
