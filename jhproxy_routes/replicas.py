"""Every replica of the sidecar, seen by the route manager as one route table.

The proxy sends a protected port's traffic to ``sidecar_url`` (one replica, or a load
balancer in front of several: a Kubernetes Service); the hub must tell *every* replica about
every route. Changes go to all replicas; a read merges their tables so that a reconciliation
re-sends a route that any replica lacks or holds differently, and deletes a stale route that
any replica still holds. A change for one server (a spawn, a new token) must reach every
replica, or it fails; a reconciliation goes on with the replicas that answer (one replica
gone must not hold up the proxy's routes) and logs the others. A replica that lacks a route
answers 503 for it: it fails closed. The replicas are ``sidecar_api_urls``; with ``resolve_all`` each host
name there stands for every address it resolves to (a Kubernetes headless Service), looked up
again at most every ``RESOLVE_EVERY`` seconds, so replicas that come and go are followed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from .routeapi import RouteAPIError, SidecarRouteAPI

RESOLVE_EVERY = 5.0  # seconds between two DNS lookups of the replicas' names
DIFFERS = {"replicas disagree": True}  # matches no wanted route: it is sent again


class SidecarReplicas:
    def __init__(self, api_urls: list[str], resolve_all: bool, make_api: Callable[[str], SidecarRouteAPI]):
        self.api_urls = api_urls
        self.resolve_all = resolve_all
        self.make_api = make_api
        self._apis: dict[str, SidecarRouteAPI] = {}
        self._resolved_at = -RESOLVE_EVERY
        self._current: list[SidecarRouteAPI] = []

    async def replicas(self) -> list[SidecarRouteAPI]:
        """The route APIs of the replicas there are now."""
        if not self.resolve_all:
            return [self._api(url) for url in self.api_urls]
        if time.monotonic() - self._resolved_at >= RESOLVE_EVERY:
            urls = []
            for url in self.api_urls:
                urls += await self._expand(url)
            self._current = [self._api(url) for url in dict.fromkeys(urls)]
            self._resolved_at = time.monotonic()
        return self._current

    def _api(self, url: str) -> SidecarRouteAPI:
        if url not in self._apis:
            self._apis[url] = self.make_api(url)
        return self._apis[url]

    async def _expand(self, url: str) -> list[str]:
        """``url`` once per address of its host (none if the name does not resolve now)."""
        parts = urlsplit(url)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            return []
        urls = []
        for _, _, _, _, address in infos:
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            urls.append(urlunsplit(parts._replace(netloc=f"{host}:{parts.port}")))
        return urls

    async def _all(self, call, lenient: bool = False) -> list:
        """``call(api)`` on every replica at once: the results. Raises RouteAPIError naming
        each failure; ``lenient``: only if no replica answered (the others are logged)."""
        apis = await self.replicas()
        if not apis:
            raise RouteAPIError(f"no sidecar replica found at {', '.join(self.api_urls)}")
        results = await asyncio.gather(*(call(api) for api in apis), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, RouteAPIError):
                raise error
        if errors and (not lenient or len(errors) == len(results)):
            raise RouteAPIError("; ".join(map(str, errors)))
        for api, error in zip(apis, results):
            if isinstance(error, RouteAPIError):
                api.log.error("jhproxy-routes: sidecar replica left out of this reconciliation: %s", error)
        return [r for r in results if not isinstance(r, BaseException)]

    # ---- the route table interface (as RouteAPI) ------------------------------------------
    # one server's changes: every replica; a reconciliation's (the *_many, get_all): lenient
    async def add(self, routespec: str, data: dict) -> None:
        await self._all(lambda api: api.add(routespec, data))

    async def delete(self, routespec: str) -> None:
        await self._all(lambda api: api.delete(routespec))

    async def add_many(self, routes: dict[str, dict]) -> None:
        await self._all(lambda api: api.add_many(routes), lenient=True)

    async def delete_many(self, routespecs: list[str]) -> None:
        await self._all(lambda api: api.delete_many(routespecs), lenient=True)

    async def get_all(self) -> dict[str, dict]:
        """The routes, merged: a route the replicas do not all hold alike reads as DIFFERS."""
        tables = await self._all(lambda api: api.get_all(), lenient=True)
        if len(tables) == 1:
            return tables[0]
        merged = {}
        for table in tables:
            for key, data in table.items():
                merged[key] = data if all(other.get(key) == data for other in tables) else DIFFERS
        return merged

    async def aclose(self) -> None:
        await asyncio.gather(*(api.aclose() for api in self._apis.values()))

    async def mark_complete(self) -> None:
        """Tell every replica its table is whole: from then on it reports itself ready."""
        await self._all(lambda api: api.mark_complete(), lenient=True)
