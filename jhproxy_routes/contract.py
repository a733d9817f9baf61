"""The contract between the hub and the sidecar, in one place both sides import: the
settings the hub hands a sidecar (its environment, with their defaults), the sidecar's service
name and OAuth client, and the paths of the sidecar's own API.

The hub's traits (``config.py``) take their defaults from :class:`SidecarSettings`; the hub
writes the environment of a managed sidecar with :meth:`SidecarSettings.environ`, and a
sidecar reads it back with :meth:`SidecarSettings.from_environ`, whoever started it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

#: the sidecar's JupyterHub service: its name, and the OAuth client the hub makes for it
SERVICE_NAME = "jhproxy-routes"
CLIENT_ID = f"service-{SERVICE_NAME}"

#: everything of the sidecar's own under this path, on any host (never an app's)
API_PREFIX = "/_jhproxy-routes/"
#: the route table (CHP's route API: ``GET/POST/DELETE <ROUTES_API>/<routespec>``)
ROUTES_API = API_PREFIX + "api/routes"
#: many route changes in one request, and the mark of a complete table
BULK_API = API_PREFIX + "api/bulk"
#: the activity of servers since the hub last asked
ACTIVITY_API = API_PREFIX + "api/activity"
#: 200 once the sidecar holds the hub's whole table, else 503
READY_PATH = API_PREFIX + "ready"
HEALTH_PATH = API_PREFIX + "health"
METRICS_PATH = API_PREFIX + "metrics"

#: the secret the hub updates the sidecar's table with (and the sidecar's hub API token
#: when the hub does not start it); not one of :class:`SidecarSettings`: never defaulted
TOKEN_ENV = "JHPROXY_ROUTES_SIDECAR_TOKEN"


@dataclass(frozen=True)
class SidecarSettings:
    """What the hub tells its sidecar, each field with its environment variable and default
    (the help of each is on the ``c.PortRoutes`` trait of the same name)."""

    upstream_timeout: float = 300.0
    client_timeout: float = 60.0
    client_idle_timeout: float = 300.0
    max_idle_connections: int = 10_000
    login_cache_max_age: int = 60
    bad_token_limit: int = 10
    bad_token_window: float = 60.0
    audit_log: str = ""  # an absolute path; empty: no audit log
    authenticate_metrics: bool = True
    metrics_by_route: bool = True
    trusted_proxies: tuple[str, ...] = ()
    token_cookies: bool = True

    @staticmethod
    def variable(name: str) -> str:
        return "JHPROXY_ROUTES_" + name.upper()

    def environ(self) -> dict[str, str]:
        """The settings as environment variables."""
        return {self.variable(f.name): _to_text(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SidecarSettings:
        """The settings from environment variables; an unset variable keeps the default.
        Raises ValueError naming the variable whose value is not of its kind."""
        values = {}
        for f in fields(cls):
            text = environ.get(cls.variable(f.name))
            if text is not None:
                values[f.name] = _from_text(cls.variable(f.name), text, type(f.default))
        return cls(**values)


DEFAULTS = SidecarSettings()


def _to_text(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _from_text(variable: str, text: str, kind: type):
    if kind is bool:
        if text not in ("0", "1"):
            raise ValueError(f"{variable}={text!r}: must be 0 or 1")
        return text == "1"
    if kind is tuple:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{variable}={text!r}: must be {'an integer' if kind is int else 'a number'}") from None
