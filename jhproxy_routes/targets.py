"""Where a port of a user's server can be reached: the target of its route, and on the hub's
own machine the system user whose listener alone it may reach.

The default is the host the spawner reports for the server (``spawner.server.host``, the
address JupyterHub itself routes to) with the allowed port instead of the server's own. That
fits every spawner that gives each server an address of its own: DockerSpawner with
``use_internal_ip``, KubeSpawner (the pod IP). For DockerSpawner the container is inspected
instead (``docker.py``): its current IP, or in host-binding mode each port's host port.

Servers on the hub's own machine share one address: port 5000 there is whichever process
bound it first. Where each server runs as a system user of its own (LocalProcessSpawner,
SystemdSpawner as TLJH uses it), its routes carry that user's uid and the sidecar forwards
only over connections whose listener is that user's (``procnet``): another user's app on
the port is never reached. Which uid: :func:`system_uid`, or the admin's hook
``PortRoutes.server_uid``. Where the server runs as the hub's own user
(SimpleLocalProcessSpawner) or as root, or its user is not known, a uid tells no one apart:
such targets are refused unless ``PortRoutes.allow_shared_host`` says the users trust each
other (or there is one).
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import os
import pwd
import socket
import time
from typing import NamedTuple
from urllib.parse import urlparse

# at import time, not on first use: importing dockerspawner takes ~0.5 s, which would
# block the hub's event loop mid-reconciliation
from .docker import container_targets, is_docker
from .errors import SharedHostError
from .interfaces import own_addresses


@functools.cache
def hub_machine_names() -> frozenset[str]:
    """The names of this machine, looked up once (getfqdn may ask DNS, for milliseconds)."""
    return frozenset({"localhost", socket.gethostname(), socket.getfqdn()})


ADDRESSES_MAX_AGE = 30.0  # seconds the machine's own addresses are kept before they are read again
_addresses: tuple[float, frozenset[str]] = (-ADDRESSES_MAX_AGE, frozenset())


def hub_machine_addresses() -> frozenset[str]:
    """The addresses of this machine's own interfaces (a server told to listen on one of
    them, ``c.Spawner.ip = "192.0.2.2"``, is on the hub's machine as much as one on
    127.0.0.1), read again after ``ADDRESSES_MAX_AGE`` seconds."""
    global _addresses
    at, found = _addresses
    if time.monotonic() - at > ADDRESSES_MAX_AGE:
        found = frozenset(str(ipaddress.ip_address(a)) for a in own_addresses())
        _addresses = (time.monotonic(), found)
    return found


def is_hub_machine(host: str) -> bool:
    if host in hub_machine_names():
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified or str(address) in hub_machine_addresses()


class Targets(NamedTuple):
    """The app addresses of a server's allowed ports, and whose listeners they must be."""

    urls: dict[int, str]  # {port: http://host:port}
    uid: int | None = None  # the system user whose listener alone a route may reach; None: any


def process_uid(pid: int) -> int | None:
    """The effective uid of process ``pid`` (what its sockets get), None if it is gone."""
    try:
        with open(f"/proc/{int(pid)}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return int(line.split()[2])
    except (OSError, ValueError):
        pass
    return None


def system_uid(spawner) -> int | None:
    """The uid a spawner runs its server as, as far as it shows: its process's
    (``spawner.pid``: LocalProcessSpawner and its subclasses, sudospawner), else the system
    user SystemdSpawner starts it as (``username_template``, which TLJH sets to
    ``jupyter-<name>``; unknown with ``dynamic_users``); None if neither says."""
    if getattr(spawner, "pid", 0):
        return process_uid(spawner.pid)
    template = getattr(spawner, "username_template", None)
    if isinstance(template, str) and not getattr(spawner, "dynamic_users", False):
        try:
            return pwd.getpwnam(template.format(USERNAME=spawner.user.name, USERID=spawner.user.id)).pw_uid
        except (KeyError, ValueError, IndexError):  # no such user; a template SystemdSpawner would refuse too
            return None
    return None


async def server_uid(spawner, hook=None) -> int | None:
    """The uid of the server: the admin's ``hook(spawner)`` (``PortRoutes.server_uid``,
    sync or async) if set, else :func:`system_uid`."""
    if hook is None:
        return system_uid(spawner)
    uid = hook(spawner)
    if inspect.isawaitable(uid):
        uid = await uid
    if uid is not None and (type(uid) is not int or uid < 0):
        raise SharedHostError(f"c.PortRoutes.server_uid returned {uid!r}, not a uid or None")
    return uid


def own_uid(host: str, uid: int | None, allow_shared_host: bool) -> int | None:
    """For a server on the hub's machine (at ``host``) running as ``uid``: the uid its
    routes' listeners must have (a user of its own), or None (a shared host allowed as
    one). Raises SharedHostError where a uid tells no one apart (the hub's own user, root,
    or not known), unless allowed."""
    if uid is not None and uid not in (0, os.geteuid()):
        return uid
    if allow_shared_host:
        return None
    why = (
        "the system user it runs as is not known" if uid is None else f"it runs as the hub's own system user or root (uid {uid})"
    )
    raise SharedHostError(
        f"its address {host} is the hub's own machine, where all users share ports, and {why}:"
        " set c.PortRoutes.server_uid, or c.PortRoutes.allow_shared_host = True if the users trust each other"
    )


def port_target(spawner, port: int) -> str:
    """``http://<server host>:<port>`` for a running spawner."""
    host = urlparse(spawner.server.host).hostname
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{int(port)}"


SHARED_NETWORK_MODES = ("host", "none")  # and "container:<name>": another container's network


def has_own_network(spawner) -> bool:
    """Whether a running server has a network of its own (a container's, a pod's), where a
    listener on 127.0.0.1 is its alone and its own addresses are no one else's: only the
    spawners that say so, DockerSpawner on a network of containers (not the host's, none, or
    another container's) and KubeSpawner without ``hostNetwork``. Only there may the
    in-server part relay to loopback apps. A server elsewhere (a batch or SSH node, shared
    by many users) is not taken for one."""
    if spawner.server is None:
        return False
    if is_docker(spawner):  # its ports published on the hub's machine too: the container's own network
        host_config = spawner.extra_host_config if isinstance(spawner.extra_host_config, dict) else {}
        modes = (spawner.network_name, host_config.get("network_mode") or "")
        return not any(mode in SHARED_NETWORK_MODES or mode.startswith("container:") for mode in modes)
    if is_hub_machine(urlparse(spawner.server.host).hostname):
        return False
    if any(cls.__name__ == "KubeSpawner" for cls in type(spawner).__mro__):
        pod = spawner.extra_pod_config if isinstance(getattr(spawner, "extra_pod_config", None), dict) else {}
        return not pod.get("hostNetwork")
    return False


def with_protocol(target: str, protocol: str) -> str:
    """A port's target (``http://host:port``) with the scheme of the port's ``protocol``."""
    return protocol + target[target.index(":") :]


async def port_targets(spawner, ports: list[int], allow_shared_host: bool = False, uid_hook=None) -> Targets:
    """The targets of the allowed ports of a running server (raises SharedHostError for a
    server on the hub's machine whose uid tells no one apart, unless allowed)."""
    if is_docker(spawner):
        return Targets(await container_targets(spawner, ports))
    urls = {port: port_target(spawner, port) for port in ports}
    host = urlparse(spawner.server.host).hostname
    if not is_hub_machine(host):
        return Targets(urls)
    return Targets(urls, own_uid(host, await server_uid(spawner, uid_hook), allow_shared_host))
