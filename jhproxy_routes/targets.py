"""Where a port of a user's server can be reached: the target of its route.

The default is the host the spawner reports for the server (``spawner.server.host``, the
address JupyterHub itself routes to) with the allowed port instead of the server's own. That
fits every spawner whose server address the proxy can reach: LocalProcessSpawner,
DockerSpawner with ``use_internal_ip``, KubeSpawner (the pod IP).
"""

from __future__ import annotations

from urllib.parse import urlparse


def port_target(spawner, port: int) -> str:
    """``http://<server host>:<port>`` for a running spawner."""
    host = urlparse(spawner.server.host).hostname
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{int(port)}"
