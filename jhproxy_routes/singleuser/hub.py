"""The hub, as the in-server part talks to it: with the server's own token
(``JUPYTERHUB_API_TOKEN``, which holds the token API's scope for this server alone).

- :meth:`HubClient.settings`: the server's port settings (``GET /hub/proxytoken/<server>
  ?format=full``): the allowed ports, their URLs and access, the token, and whether the
  relay to loopback-only apps is wanted;
- :meth:`HubClient.change`: a change from the server's user (the JupyterLab panel), as the
  token API takes it;
- :meth:`HubClient.report`: what listens on the allowed ports (``listening.py`` in the hub).
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import httpx

TIMEOUT = 10.0


class HubError(Exception):
    """The hub could not be asked, or said no; ``status`` is its answer's (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class HubClient:
    """The hub of this server, from the environment JupyterHub gives every server."""

    def __init__(self, environ=os.environ):
        self.token = environ.get("JUPYTERHUB_API_TOKEN", "")
        api_url = environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
        self.hub_url = api_url.removesuffix("/api")  # http://hub:8081/hub
        self.api_url = api_url
        self.user = environ.get("JUPYTERHUB_USER", "")
        self.server = environ.get("JUPYTERHUB_SERVER_NAME", "")
        self._client: httpx.AsyncClient | None = None

    @property
    def present(self) -> bool:
        """Whether this server runs under a hub at all."""
        return bool(self.token and self.api_url and self.user)

    @property
    def origin(self) -> str:
        """``scheme://host:port`` of the hub as this server reaches it (its settings' URLs
        carry it where the hub does not know its public URL)."""
        scheme, _, rest = self.hub_url.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}"

    async def settings(self) -> dict:
        return await self._request("GET", f"{self.hub_url}/proxytoken/{quote(self.server)}?format=full")

    async def change(self, body: dict) -> dict:
        return await self._request("POST", f"{self.hub_url}/proxytoken/{quote(self.server)}", body)

    async def report(self, ports: list[dict]) -> None:
        await self._request("POST", f"{self.api_url}/jhproxy-routes/listening/{quote(self.server)}", {"ports": ports})

    async def _request(self, method: str, url: str, body: dict | None = None):
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=TIMEOUT, headers={"Authorization": f"token {self.token}"})
        try:
            response = await self._client.request(method, url, content=None if body is None else json.dumps(body))
        except httpx.HTTPError as e:
            raise HubError(f"the hub did not answer ({type(e).__name__}: {e})") from None
        if response.status_code == 204:
            return None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code >= 400:
            message = answer.get("message") if isinstance(answer, dict) else None
            raise HubError(message or f"the hub answered {response.status_code}", response.status_code)
        return answer

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
