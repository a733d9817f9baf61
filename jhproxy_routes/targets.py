"""Where a port of a user's server can be reached: the target of its route.

The default is the host the spawner reports for the server (``spawner.server.host``, the
address JupyterHub itself routes to) with the allowed port instead of the server's own. That
fits every spawner that gives each server an address of its own: DockerSpawner with
``use_internal_ip``, KubeSpawner (the pod IP). For DockerSpawner the container is inspected
instead (``docker.py``): its current IP, or in host-binding mode each port's host port.

Servers on the hub's own machine (LocalProcessSpawner) share one address: port 5000 there is
whichever process bound it first, so every user's route to 5000 would reach the same app.
Such targets are refused unless ``PortRoutes.allow_shared_host`` says the users trust each
other (or there is one).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from urllib.parse import urlparse

# at import time, not on first use: importing dockerspawner takes ~0.5 s, which would
# block the hub's event loop mid-reconciliation
from .docker import container_targets, is_docker
from .errors import SharedHostError


@functools.cache
def hub_machine_names() -> frozenset[str]:
    """The names of this machine, looked up once (getfqdn may ask DNS, for milliseconds)."""
    return frozenset({"localhost", socket.gethostname(), socket.getfqdn()})


def is_hub_machine(host: str) -> bool:
    if host in hub_machine_names():
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def check_own_address(spawner, allow_shared_host: bool = False) -> None:
    """Raise SharedHostError when the server's address is shared by all users."""
    host = urlparse(spawner.server.host).hostname
    if not allow_shared_host and is_hub_machine(host):
        raise SharedHostError(
            f"its address {host} is the hub's own machine, where all users share ports;"
            " set c.PortRoutes.allow_shared_host = True if the users trust each other"
        )


def port_target(spawner, port: int) -> str:
    """``http://<server host>:<port>`` for a running spawner."""
    host = urlparse(spawner.server.host).hostname
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{int(port)}"


async def port_targets(spawner, ports: list[int], allow_shared_host: bool = False) -> dict[int, str]:
    """``{port: target URL}`` for the allowed ports of a running server (raises
    SharedHostError for servers on the hub's machine unless allowed)."""
    if is_docker(spawner):
        return await container_targets(spawner, ports)
    check_own_address(spawner, allow_shared_host)
    return {port: port_target(spawner, port) for port in ports}
