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

``POST /hub/api/jhproxy-routes/listening/<server>``: what listens on the server's allowed
ports, as its in-server part reports it with the server's own token (``listening.py``).

``GET /hub/api/jhproxy-routes/access/<owner>/<server>``: whether the user whose token this is
may access that server now (``{"access": true}``), as the sidecar asks for ``shared`` ports;
answered only to the sidecar's login tokens.

Auth as for JupyterHub's own API: an API token (``Authorization: token ...``), or the hub
login cookie plus JupyterHub's XSRF token. Either needs the scope
``custom:jhproxy-routes:tokens`` on the server (``!server=<user>/<server>``, or on its owner:
``!user=<user>``), which ``install(c)`` grants to every user for their own servers and to a
server's own token for that server only, or ``tokens`` on the owner (whoever may make the owner's API
tokens can act as the owner anyway: so admins may manage everyone's ports).
"""

from __future__ import annotations

import json

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.utils import url_path_join
from tornado import web

from .contract import CLIENT_ID, SERVICE_NAME
from .listening import MAX_BODY, ReportError, parsed_report
from .logsafe import shown
from .policy import Forbidden
from .routeapi import RouteAPIError
from .scopes import SCOPE
from .settings import ACTIONS, NotApplied, SettingsError
from .sharing import may_access
from .tokens import TokenUnreadable


def token_handlers():
    return [
        (r"/proxytoken/?(?P<server_name>[^/]*)/?", ProxyTokenRoute),
        (r"/api/jhproxy-routes/routes/?", RouteListHandler),
        (r"/api/jhproxy-routes/access/(?P<owner>[^/]+)/(?P<server_name>[^/]*)", ServerAccessHandler),
        (r"/api/jhproxy-routes/listening/(?P<server_name>[^/]*)", ListeningHandler),
    ]


def may_manage(handler, username: str, servername: str) -> bool:
    """Whether the request's credential may read and change the port settings of the server
    ``username/servername``: the scope for that server (a user-level grant covers all the
    user's servers; a server's own token has it for that server only), or ``tokens``."""
    return handler.has_scope(f"{SCOPE}!server={username}/{servername}") or handler.has_scope(f"tokens!user={username}")


def port_settings(handler):
    """The proxy's ``PortSettings`` (``settings.py``)."""
    service = getattr(handler.proxy, "port_settings", None)
    if service is None:
        raise web.HTTPError(500, "jhproxy-routes is not installed: call jhproxy_routes.install(c).")
    return service


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
        service = port_settings(self)
        servers = sorted({"", *user.orm_user.orm_spawners})
        html = await self.render_template(
            "jhproxy-routes.html",
            api_url=url_path_join(self.hub.base_url, "proxytoken/"),
            servers=[name for name in servers if service.routed(user.name, name)],
            groups=sorted(g.name for g in user.groups),
        )
        self.finish(html)


class ProxyTokenHandler(APIHandler):
    """Read and change the port token and port access of one of the user's servers."""

    def _target(self, server_name: str):
        """The user this request is about (``?user=``, else the credential's own), after
        the scope check."""
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
        return user

    def _origin(self) -> str:
        """The hub's public URL if set: API calls from inside a server come in at its internal address."""
        public = self.settings.get("public_url")
        return f"{public.scheme}://{public.netloc}" if public else f"{self.request.protocol}://{self.request.host}"

    async def get(self, server_name=""):
        user = self._target(server_name)
        service = port_settings(self)
        if self.get_argument("format", "") == "full":
            result = await service.settings(user, server_name, self._origin())
        else:
            try:
                result = await service.value(user, server_name)
            except TokenUnreadable as e:
                raise web.HTTPError(409, f"The token cannot be shown: {e}.") from None
        self.finish(json.dumps(result))

    async def post(self, server_name=""):
        user = self._target(server_name)
        service = port_settings(self)
        try:
            result = await service.change(
                user,
                server_name,
                self._parse_body(),
                by=self.current_user.name,
                origin=self._origin(),
                client=self.request.remote_ip,
                credential="token" if self.get_auth_token() else "login",
            )
        except Forbidden as e:
            raise web.HTTPError(403, str(e)) from None
        except SettingsError as e:
            raise web.HTTPError(400, str(e)) from None
        except NotApplied as e:
            raise web.HTTPError(503, f"Saved, but the proxy could not be updated yet: {e}") from None
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


class RouteListHandler(APIHandler):
    """``GET /hub/api/jhproxy-routes/routes``: the live port routes (those in the proxy) of
    every user the credential holds the scope for (``PortSettings.route_rows``: read from the
    proxy's and the sidecar's tables, never from the spawners, and at most every few seconds)."""

    async def get(self):
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        only = self.get_argument("user", "")
        allowed: dict[tuple[str, str], bool] = {}  # has_scope per server, asked once

        def visible(name: str, server: str) -> bool:
            if (name, server) not in allowed:
                allowed[name, server] = may_manage(self, name, server)
            return (not only or name == only) and allowed[name, server]

        try:
            rows = await port_settings(self).route_rows()
        except RouteAPIError as e:
            raise web.HTTPError(503, f"The route tables could not be read: {e}") from None
        self.finish(json.dumps([row for row in rows if visible(row["user"], row["server"])]))


class ServerAccessHandler(APIHandler):
    """``GET /hub/api/jhproxy-routes/access/<owner>/<server>``: whether the user whose token
    this is may access the server ``owner/server`` now (``sharing.may_access``: the user's
    roles, groups and shares, read from the hub's database). The sidecar asks it for a
    ``shared`` port with the visitor's own OAuth token, and only such a token is answered:
    the hub login on ports is the sidecar's OAuth client, so no other token of the user (a
    server's, one of few scopes) learns anything here, and nor does a service's."""

    def get(self, owner: str, server_name: str):
        current, token = self.current_user, self.get_token()
        if current is None or token is None or token.user is None or token.client_id != CLIENT_ID:
            raise web.HTTPError(403, f"Only a login token of the {SERVICE_NAME} service may ask this.")
        if "/" in owner or "/" in server_name:
            raise web.HTTPError(400, "A user or server name has no '/'.")
        allowed = may_access(self.db, current.orm_user, owner, server_name)
        self.finish(json.dumps({"user": current.name, "server": f"{owner}/{server_name}", "access": allowed}))


class ListeningHandler(APIHandler):
    """``POST /hub/api/jhproxy-routes/listening/<server>``: the in-server part's report of
    what listens on the allowed ports of one of its user's servers (``listening.py``), with
    the scope the token API needs for that server (a server's own token has it for itself)."""

    async def post(self, server_name: str):
        current = self.current_user
        if current is None or getattr(current, "kind", "user") != "user":
            raise web.HTTPError(403, "Only a user's credential reports what listens in the user's server.")
        if not may_manage(self, current.name, server_name):
            raise web.HTTPError(
                403, f"This credential lacks the scope {SCOPE} for the server {shown(current.name)}/{shown(server_name)}."
            )
        if server_name not in current.orm_user.orm_spawners or not current.spawners[server_name].ready:
            raise web.HTTPError(409, f"The server {shown(current.name)}/{shown(server_name)} is not running.")
        if len(self.request.body) > MAX_BODY:  # not parsed in the hub's event loop
            raise web.HTTPError(413, f"A report is at most {MAX_BODY} bytes.")
        try:
            ports = parsed_report(json.loads(self.request.body or b"null"))
        except (ValueError, UnicodeDecodeError) as e:
            raise web.HTTPError(400, str(e) if isinstance(e, ReportError) else "The body must be a JSON report.") from None
        await port_settings(self).report(current, server_name, ports)
        self.set_status(204)
        self.finish()
