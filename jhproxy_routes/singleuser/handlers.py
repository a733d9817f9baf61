"""The Jupyter server's API of jhproxy-routes, for the server's own user and the JupyterLab
extension: ``<server>/jhproxy-routes/ports``.

``GET``: ``{"hub": true, "hub_error": null, "mode": ..., "token": ..., "relay": ...,
"ports": [...]}``, the panel's view (``view.py``) with the server's token settings as the
hub gives them; outside a hub ``{"hub": false, "ports": [...]}``, the listeners alone.

``POST`` a change as the hub's token API takes it (``{"ports": {"8501": "public"}}``,
``{"mode": "random", "expires_in": 3600}``): made by the hub with the server's own token,
answered with the fresh view, or the hub's refusal with its status and message.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .hub import HubError
from .view import port_entries
from .watcher import scan

SERVER_FIELDS = ("user", "server", "mode", "token", "token_readable", "token_expires", "token_max_age", "allowed_modes")


class PortsHandler(APIHandler):
    auth_resource = "jhproxy-routes"

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")  # its answers carry the port token

    @property
    def watcher(self):
        """The server's PortWatcher (``watcher.py``), None outside a hub."""
        return self.settings.get("jhproxy_routes_watcher")

    def owner_only(self) -> None:
        """Whoever the hub lets into the server (a share, a role with access to all servers)
        gets through the Jupyter server's login; the ports' settings and token, read and
        changed with the server's own token, are its user's alone, as at the hub."""
        if self.watcher is not None and getattr(self.current_user, "username", None) != self.watcher.hub.user:
            raise web.HTTPError(403, "Only the server's own user manages its ports.")

    @web.authenticated
    @authorized
    async def get(self):
        self.owner_only()
        if self.watcher is None:
            found = await asyncio.to_thread(scan, self.serverapp)
            self.finish(json.dumps({"hub": False, "ports": [listener.as_json() for listener in found]}))
            return
        if self.watcher.settings is None:
            await self.watcher.refresh_settings()
        self.finish(json.dumps(self.view()))

    @web.authenticated
    @authorized
    async def post(self):
        self.owner_only()
        if self.watcher is None:
            raise web.HTTPError(409, "This server does not run under a JupyterHub with jhproxy-routes.")
        try:
            body = json.loads(self.request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'The body must be a JSON object such as {"ports": {"8501": "public"}}.')
        try:
            await self.watcher.change(body)
        except HubError as e:
            raise web.HTTPError(e.status if 400 <= e.status < 500 else 502, str(e)) from None
        self.finish(json.dumps(self.view()))

    def view(self) -> dict:
        watcher = self.watcher
        settings = watcher.settings or {}
        return {
            "hub": True,
            "hub_error": watcher.hub_error,
            **{key: settings.get(key) for key in SERVER_FIELDS},
            "relay": bool(settings.get("loopback_relay")),
            "ports": port_entries(watcher.listeners, watcher.settings, watcher.relayed, self.rebase),
        }

    def rebase(self, url: str) -> str:
        """A port's URL as the browser reaches it: where the hub named itself by the address
        this server reaches it at (it knows no public URL), the origin of this request."""
        hub_origin = self.watcher.hub.origin
        if not url.startswith(hub_origin + "/"):
            return url
        forwarded = self.request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
        scheme = forwarded if forwarded in ("http", "https") else self.request.protocol
        host = self.request.host if urlsplit(f"//{self.request.host}").hostname else urlsplit(hub_origin).netloc
        return f"{scheme}://{host}{url[len(hub_origin) :]}"
