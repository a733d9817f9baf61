"""The part of jhproxy-routes that runs in the user's server: a Jupyter server extension,
enabled by the package's data files (``etc/jupyter/jupyter_server_config.d``) wherever the
package is installed, so that there is nothing for the user to run.

- ``GET/POST <server>/jhproxy-routes/ports`` (``handlers.py``): the server's listening ports
  with their processes and the hub's settings for them, for the JupyterLab panel;
- under a hub (``JUPYTERHUB_API_TOKEN`` set), the watch over the server's ports
  (``watcher.py``): the relay to loopback-only apps on allowed ports, and the reports of
  what listens to the hub.
"""

from __future__ import annotations

import asyncio

from .handlers import PortsHandler
from .hub import HubClient
from .watcher import PortWatcher

WATCHER = "jhproxy_routes_watcher"


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "jhproxy_routes.singleuser"}]


def _load_jupyter_server_extension(serverapp) -> None:
    settings = serverapp.web_app.settings
    hub = HubClient()
    settings[WATCHER] = PortWatcher(serverapp, hub) if hub.present else None
    base_url = settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [(f"{base_url.rstrip('/')}/jhproxy-routes/ports", PortsHandler)])


async def _start_jupyter_server_extension(serverapp) -> None:
    watcher = serverapp.web_app.settings.get(WATCHER)
    if watcher is not None:
        serverapp.web_app.settings["jhproxy_routes_task"] = asyncio.ensure_future(watcher.run())
