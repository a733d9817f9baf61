"""DockerSpawner glue: port bindings in host-binding mode, and where each port lives.

With ``use_internal_ip`` (a docker network) every port of the container is reachable at the
container's IP. Without it (DockerSpawner's default) only published ports are reachable: this
module publishes the allowed ports too (to the spawner's ``host_ip``, on random host ports),
so the admin lists the ports once, in ``c.PortRoutes.ports``. Either way the targets come
from inspecting the container, at every reconciliation: a container restarted or re-created
with a new IP or new host ports gets its routes updated.
"""

from __future__ import annotations

import inspect

from .errors import TargetsPending

try:
    from dockerspawner import DockerSpawner
except ImportError:  # dockerspawner is optional
    DockerSpawner = None


def is_docker(spawner) -> bool:
    return DockerSpawner is not None and isinstance(spawner, DockerSpawner)


def is_host_binding(spawner) -> bool:
    return is_docker(spawner) and not spawner.use_internal_ip


async def _evaluate(value, spawner) -> dict:
    """A DockerSpawner ``extra_*`` setting: a dict, or a (maybe async) callable of the spawner."""
    if callable(value):
        value = value(spawner)
        if inspect.isawaitable(value):
            value = await value
    return dict(value or {})


def publish_ports(original_create, original_host, ports: list[int]):
    """``extra_create_kwargs`` and ``extra_host_config`` that add the allowed ports to the
    admin's own settings, in host-binding mode only."""

    async def extra_create_kwargs(spawner):
        kwargs = await _evaluate(original_create, spawner)
        if is_host_binding(spawner):
            kwargs["ports"] = {**{f"{p}/tcp": None for p in ports}, **dict(kwargs.get("ports") or {})}
        return kwargs

    async def extra_host_config(spawner):
        config = await _evaluate(original_host, spawner)
        if is_host_binding(spawner):
            bindings = {p: (spawner.host_ip,) for p in ports}
            config["port_bindings"] = {**bindings, **dict(config.get("port_bindings") or {})}
        return config

    return extra_create_kwargs, extra_host_config


async def container_targets(spawner, ports: list[int]) -> dict[int, str]:
    """``{port: URL}`` for a running container: its IP on the spawner's network, or with
    host bindings, the published host port of each allowed port."""
    info = await spawner.docker("inspect_container", spawner.container_id)
    if not (info.get("State") or {}).get("Running"):
        raise TargetsPending(f"container {spawner.container_name} is not running")
    settings = info["NetworkSettings"]
    if not spawner.use_internal_ip:
        return _published(settings.get("Ports") or {}, spawner.host_ip, ports)
    network = (settings.get("Networks") or {}).get(spawner.network_name) or {}
    ip = network.get("IPAddress") or settings.get("IPAddress")
    if not ip:
        raise RuntimeError(f"container {spawner.container_name} has no address on network {spawner.network_name}")
    host = f"[{ip}]" if ":" in ip else ip
    return {port: f"http://{host}:{port}" for port in ports}


def _published(published: dict, host_ip: str, ports: list[int]) -> dict[int, str]:
    targets = {}
    for port in ports:
        bindings = published.get(f"{port}/tcp") or []
        if not bindings:
            continue  # not published (a container made before the port was allowed)
        host = bindings[0].get("HostIp") or host_ip
        if host in ("0.0.0.0", "::", ""):
            host = host_ip if host_ip not in ("0.0.0.0", "::", "") else "127.0.0.1"
        targets[port] = f"http://{host}:{int(bindings[0]['HostPort'])}"
    return targets
