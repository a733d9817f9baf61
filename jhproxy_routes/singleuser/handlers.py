"""The Jupyter server's API of jhproxy-routes (``/jhproxy-routes/...``), for the server's own
user and the JupyterLab extension."""

from __future__ import annotations

import asyncio
import json
import os

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .listeners import listeners

KERNEL_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


class PortsHandler(APIHandler):
    """``GET``: ``{"ports": [...]}``, the listening ports of this server's user."""

    auth_resource = "jhproxy-routes"

    @web.authenticated
    @authorized
    async def get(self):
        found = await asyncio.to_thread(listeners, os.getuid(), own_ports(self.serverapp))
        self.finish(json.dumps({"ports": [listener.as_json() for listener in found]}))


def own_ports(serverapp) -> set[int]:
    """The Jupyter server's own port and every running kernel's (its ZMQ channels)."""
    ports = {serverapp.port}
    manager = serverapp.kernel_manager
    for kernel_id in manager.list_kernel_ids():
        kernel = manager.get_kernel(kernel_id)
        ports.update(getattr(kernel, name, 0) for name in KERNEL_PORTS)
    return ports - {0}
