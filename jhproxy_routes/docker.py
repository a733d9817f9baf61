"""DockerSpawner glue: port bindings in host-binding mode, and where each port then lives.

With ``use_internal_ip`` (a docker network) every port of the container is reachable at the
container's IP and the default targets apply. Without it (DockerSpawner's default) only
published ports are reachable: this module publishes the allowed ports too (to the spawner's
``host_ip``, on random host ports) and finds each one's host port by inspecting the container,
so the admin lists the ports once, in ``c.PortRoutes.ports``.
"""

from __future__ import annotations

import inspect

try:
    from dockerspawner import DockerSpawner
except ImportError:  # dockerspawner is optional
    DockerSpawner = None


def is_host_binding(spawner) -> bool:
    return DockerSpawner is not None and isinstance(spawner, DockerSpawner) and not spawner.use_internal_ip


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


async def host_binding_targets(spawner, ports: list[int]) -> dict[int, str]:
    """``{port: http://host_ip:host_port}`` for the published ports of a running container."""
    info = await spawner.docker("inspect_container", spawner.container_id)
    published = info["NetworkSettings"].get("Ports") or {}
    targets = {}
    for port in ports:
        bindings = published.get(f"{port}/tcp") or []
        if not bindings:
            continue  # not published (a container made before the port was allowed)
        host = bindings[0].get("HostIp") or spawner.host_ip
        if host in ("0.0.0.0", "::", ""):
            host = spawner.host_ip if spawner.host_ip not in ("0.0.0.0", "::") else "127.0.0.1"
        targets[port] = f"http://{host}:{int(bindings[0]['HostPort'])}"
    return targets
