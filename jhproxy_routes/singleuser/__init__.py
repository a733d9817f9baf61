"""The part of jhproxy-routes that runs in the user's server: a Jupyter server extension,
enabled by the package's data files (``etc/jupyter/jupyter_server_config.d``) wherever the
package is installed, so that there is nothing for the user to run.

``GET <server>/jhproxy-routes/ports``: the server's listening ports with the process behind
each (``listeners.py``), never the Jupyter server's own port or its kernels'.
"""

from __future__ import annotations

from .handlers import PortsHandler


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "jhproxy_routes.singleuser"}]


def _load_jupyter_server_extension(serverapp) -> None:
    base_url = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [(f"{base_url.rstrip('/')}/jhproxy-routes/ports", PortsHandler)])
