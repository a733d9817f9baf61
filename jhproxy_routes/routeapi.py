"""A client for a route table with configurable-http-proxy's REST API.

Two tables speak it: CHP itself (``/api/routes``) and the sidecar's mirror of it
(``/_jhproxy-routes/api/routes``). Route keys are routespecs: escaped paths with a leading
and a trailing ``/``. Only routes whose data carry ``ROUTE_TAG`` are ours; JupyterHub's own
routes (tagged ``jupyterhub``) and anybody else's are never read back or touched.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import httpx
from jupyterhub.utils import exponential_backoff

ROUTE_TAG = "jhproxy_routes"


class RouteAPIError(Exception):
    """A route API request failed for good (after retries, or with a 4xx)."""


def routespec_to_api_path(routespec: str) -> str:
    # CHP keeps no trailing slash in its keys (and its DELETE dislikes one)
    return routespec.rstrip("/") or "/"


def routespec_from_api_key(key: str) -> str:
    # CHP returns keys unescaped: escape them back as JupyterHub does
    spec = quote(key, safe="@/~")
    return spec if spec.endswith("/") else spec + "/"


class RouteAPI:
    """Read, add and delete our routes in one route table, with bounded retries."""

    def __init__(
        self,
        name: str,
        api_url: str,
        auth_token: str,
        timeout: float = 10,
        retry_timeout: float = 30,
        concurrency: int = 10,
        log: logging.Logger | None = None,
    ):
        self.name = name
        self.routes_url = api_url.rstrip("/") + "/api/routes"
        self.retry_timeout = retry_timeout
        self.log = log or logging.getLogger(__name__)
        self.semaphore = asyncio.Semaphore(concurrency)
        self.client = httpx.AsyncClient(
            timeout=timeout,
            headers={"Authorization": f"token {auth_token}"},
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def get_all(self) -> dict[str, dict]:
        """Our routes: ``{routespec: data}`` (data includes ``target``)."""
        response = await self._request("GET", "")
        return {
            routespec_from_api_key(key): data
            for key, data in response.json().items()
            if isinstance(data, dict) and data.get(ROUTE_TAG)
        }

    async def add(self, routespec: str, data: dict) -> None:
        await self._request("POST", routespec_to_api_path(routespec), {**data, ROUTE_TAG: True})

    async def delete(self, routespec: str) -> None:
        await self._request("DELETE", routespec_to_api_path(routespec), ok_statuses=(404,))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _request(self, method, path, body=None, ok_statuses=()) -> httpx.Response:
        url = self.routes_url + quote(path, safe="@/~%")
        what = f"{method} {self.name} route {path or '(all)'}"
        last_error = "no attempt"

        async def attempt():
            nonlocal last_error
            try:
                async with self.semaphore:
                    response = await self.client.request(method, url, json=body)
            except httpx.HTTPError as e:
                last_error = f"{type(e).__name__}: {e or 'no answer'}"
                self.log.warning("%s failed (%s), retrying", what, last_error)
                return None
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}"
                self.log.warning("%s failed (%s), retrying", what, last_error)
                return None
            return response

        try:
            response = await exponential_backoff(
                attempt, what, timeout=self.retry_timeout, start_wait=0.1, max_wait=2
            )
        except asyncio.TimeoutError:
            raise RouteAPIError(f"{what}: gave up after {self.retry_timeout:g}s ({last_error})") from None
        if response.status_code >= 400 and response.status_code not in ok_statuses:
            raise RouteAPIError(f"{what}: HTTP {response.status_code} {response.text[:200]}")
        return response
