"""Every replica of the sidecar, as the route manager sees them.

The proxy sends a protected port's traffic to ``sidecar_url`` (one replica, or a load
balancer in front of several: a Kubernetes Service); the hub must tell *every* replica about
every route. The replicas are ``sidecar_api_urls``; with ``resolve_all`` each host name there
stands for every address it resolves to (a Kubernetes headless Service), looked up again at
most every ``RESOLVE_EVERY`` seconds, so replicas that come and go are followed.

A reconciliation takes one snapshot of the replicas, gives each the changes its own table
needs, and marks complete only those that took all of them; a replica marked complete
reports itself ready (``/_jhproxy-routes/ready``) until the mark expires (``ready_for``;
never if None), so one the hub can no longer reach can drop out of the Service instead of
serving old settings. A change for one server (a spawn, a new token) must reach every
replica whose mark may still be valid (after a hub restart: every replica, until a mark of
the previous hub would have expired), and at least one; the others (new, or gone) are
logged and left to the next reconciliation. A replica that lacks a route answers 503 for it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

from jupyterhub.utils import url_path_join

from .config import PortRoutes, url_port
from .contract import API_PREFIX
from .routeapi import RouteAPIError, SidecarRouteAPI

RESOLVE_EVERY = 5.0  # seconds between two DNS lookups of the replicas' names
DIFFERS = {"replicas disagree": True}  # in a merged table (the route list): no target to show


class SidecarReplicas:
    def __init__(
        self,
        api_urls: list[str],
        resolve_all: bool,
        make_api: Callable[[str], SidecarRouteAPI],
        log: logging.Logger,
        ready_for: float | None = None,
    ):
        self.api_urls = api_urls
        self.resolve_all = resolve_all
        self.make_api = make_api
        self.log = log
        self.ready_for = ready_for
        self._apis: dict[str, SidecarRouteAPI] = {}
        self._resolved_at = -RESOLVE_EVERY
        self._started = time.monotonic()
        self._marked_until: dict[str, float] = {}  # API URL -> until when our mark is valid
        self._failing: dict[tuple[str, str], str] = {}  # (API URL, pass) -> the error it last failed with

    @classmethod
    def from_settings(cls, settings: PortRoutes, log: logging.Logger, host_routing: bool = False) -> SidecarReplicas:
        """The replicas ``c.PortRoutes`` names (``sidecar_api_urls``, else ``sidecar_url``)."""
        urls = settings.sidecar_api_urls or [settings.sidecar_url]
        several = len(urls) > 1 or settings.sidecar_api_resolve_all
        return cls(
            urls,
            settings.sidecar_api_resolve_all,
            lambda url: SidecarRouteAPI(
                f"sidecar {url}" if several else "sidecar",
                url_path_join(url, API_PREFIX),
                settings.sidecar_api_token,
                timeout=settings.api_timeout,
                retry_timeout=settings.api_retry_timeout,
                concurrency=settings.concurrency,
                log=log,
                host_routing=host_routing,
            ),
            log,
            ready_for=settings.sidecar_ready_for or None,
        )

    # ---- which replicas --------------------------------------------------------------------
    async def replicas(self) -> list[SidecarRouteAPI]:
        """The route APIs of the replicas there are now (connections of vanished ones closed)."""
        if not self.resolve_all:
            urls = self.api_urls
        elif time.monotonic() - self._resolved_at < RESOLVE_EVERY:
            return list(self._apis.values())
        else:
            urls = []
            for url in self.api_urls:
                urls += await self._expand(url)
            self._resolved_at = time.monotonic()
        urls = list(dict.fromkeys(urls))
        for gone in set(self._apis) - set(urls):
            await self._apis.pop(gone).aclose()
        for url in urls:
            if url not in self._apis:
                self._apis[url] = self.make_api(url)
        return [self._apis[url] for url in urls]

    async def _expand(self, url: str) -> list[str]:
        """``url`` once per address of its host (none if the name does not resolve now)."""
        parts = urlsplit(url)
        port = url_port(url)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            self.log.warning("jhproxy-routes: sidecar replicas: %s does not resolve now: %s", parts.hostname, e)
            return []
        urls = []
        for _, _, _, _, address in infos:
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            urls.append(urlunsplit(parts._replace(netloc=f"{host}:{port}")))
        return urls

    @staticmethod
    async def _gather(apis, call: Callable[[SidecarRouteAPI], Awaitable]) -> tuple[dict, dict]:
        """``call(api)`` on these replicas at once: ``({api: result}, {api: RouteAPIError})``;
        any other exception is raised."""
        results = await asyncio.gather(*(call(api) for api in apis), return_exceptions=True)
        done, failed = {}, {}
        for api, result in zip(apis, results, strict=True):
            if isinstance(result, RouteAPIError):
                failed[api] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                done[api] = result
        return done, failed

    # ---- a reconciliation: per replica, lenient ----------------------------------------------
    async def each(self, apis, call: Callable[[SidecarRouteAPI], Awaitable], doing: str = "reconciliation") -> dict:
        """``{api: result}`` of ``call(api)`` for the replicas where it worked; the others
        are logged and left out of the rest of this reconciliation (or other pass, ``doing``)."""
        done, failed = await self._gather(apis, call)
        for api, error in failed.items():
            # the same error again (a replica down, a stranger at its address): once at error level
            repeated = self._failing.get((api.api_url, doing)) == str(error)
            self._failing[(api.api_url, doing)] = str(error)
            level = logging.DEBUG if repeated else logging.ERROR
            self.log.log(
                level, "jhproxy-routes: sidecar replica left out of this %s%s: %s", doing, " (again)" if repeated else "", error
            )
        for api in done:
            self._failing.pop((api.api_url, doing), None)
        return done

    async def mark_complete(self, apis) -> list[SidecarRouteAPI]:
        """Tell these replicas their tables are whole (for ``ready_for``): those told."""
        now = time.monotonic()
        done = await self.each(apis, lambda api: api.mark_complete(self.ready_for))
        for api in done:
            self._marked_until[api.api_url] = now + self.ready_for if self.ready_for else float("inf")
        return list(done)

    def _may_be_marked(self, api: SidecarRouteAPI) -> bool:
        """Whether the replica may report ready now (by our mark or a previous hub's)."""
        if not self.ready_for:
            return True
        return self._marked_until.get(api.api_url, self._started + self.ready_for) > time.monotonic()

    # ---- one server's change: every replica that may be serving ---------------------------
    async def _all(self, call) -> None:
        apis = await self.replicas()
        if not apis:
            raise RouteAPIError(f"no sidecar replica found at {', '.join(self.api_urls)}")
        done, failed = await self._gather(apis, call)
        serving = [str(error) for api, error in failed.items() if self._may_be_marked(api)]
        for api, error in failed.items():
            if not self._may_be_marked(api):  # not in service: its next reconciliation brings it up to date
                self.log.warning("jhproxy-routes: sidecar replica not in service, left to the next reconciliation: %s", error)
        if serving or not done:
            raise RouteAPIError("; ".join(serving) or f"no sidecar replica took the change at {', '.join(self.api_urls)}")

    async def add(self, routespec: str, data: dict) -> None:
        await self._all(lambda api: api.add(routespec, data))

    async def delete(self, routespec: str) -> None:
        await self._all(lambda api: api.delete(routespec))

    async def get_all(self) -> dict[str, dict]:
        """The replicas' tables merged (for listing): a route they do not all hold alike
        reads as DIFFERS."""
        done, failed = await self._gather(await self.replicas(), lambda api: api.get_all())
        tables = list(done.values())
        if not tables:
            raise RouteAPIError("; ".join(map(str, failed.values())) or f"no sidecar replica at {', '.join(self.api_urls)}")
        merged = {}
        for table in tables:
            for key, data in table.items():
                merged[key] = data if all(other.get(key) == data for other in tables) else DIFFERS
        return merged

    async def aclose(self) -> None:
        await asyncio.gather(*(api.aclose() for api in self._apis.values()))
