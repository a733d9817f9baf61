"""What the route manager needs of the hub's proxy: one route table, whatever the proxy.

A routespec is JupyterHub's (``/path/`` or ``host/path/``, escaped, with a trailing ``/``);
a route's data is a flat JSON object with its ``target``. A table reads and writes only our
routes (tagged ``ROUTE_TAG``, never ``jupyterhub``) and raises ``RouteAPIError`` when the
proxy fails for good. Backends: ``routeapi.RouteAPI`` (configurable-http-proxy's REST API,
also the sidecar's mirror), ``traefik.TraefikRouteTable`` (a Traefik dynamic
configuration file of our own, beside jupyterhub-traefik-proxy's) and
``traefik_kv.TraefikKVRouteTable`` (Traefik's etcd or redis store, beside the hub's routes).
"""

from __future__ import annotations

from typing import Protocol

from .routeapi import ROUTE_TAG

__all__ = ["ROUTE_TAG", "RouteTable"]


class RouteTable(Protocol):
    name: str  # what the table is, in log lines ("proxy", "sidecar ...")

    async def get_all(self) -> dict[str, dict]:
        """Our routes: ``{routespec: data}`` (data includes ``target``)."""

    async def add(self, routespec: str, data: dict) -> None:
        """Add or replace one route (``data`` with its ``target``)."""

    async def delete(self, routespec: str) -> None:
        """Delete one route; a route that is not there is no error."""

    async def add_many(self, routes: dict[str, dict]) -> None:
        """Add or replace many routes, as few proxy updates as the backend allows."""

    async def delete_many(self, routespecs: list[str]) -> None:
        """Delete many routes, as few proxy updates as the backend allows."""
