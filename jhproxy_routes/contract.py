"""The contract between the hub and the sidecar, in one place both sides import: the
settings the hub hands a sidecar (its environment, with their defaults), the sidecar's service
name and OAuth client, the paths of the sidecar's own API, and the route entries the hub puts
in the sidecar's table through it.

The hub's traits (``config.py``) take their defaults from :class:`SidecarSettings`; the hub
writes the environment of a managed sidecar with :meth:`SidecarSettings.environ`, and a
sidecar reads it back with :meth:`SidecarSettings.from_environ`, whoever started it.

The hub builds each entry of the sidecar's table as a :class:`RouteEntry` (one port) or a
:class:`RangesEntry` (a server's port ranges) and sends its ``to_json()``; the sidecar reads
what it is sent with ``from_json()``, which raises ValueError saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

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


#: a port's access in the sidecar: anyone, no one, or whom a restricted entry admits
ACCESS = ("public", "disabled", "restricted")


@dataclass(frozen=True, kw_only=True)
class PortCheck:
    """What the sidecar checks on a port (or a range of ports), and how it forwards there.
    ``restricted`` admits the owner's hub login, a valid token (``token_sha256``, until
    ``token_expires``), any hub user's login if ``users``, members of ``groups``, and if
    ``shared`` the login of whoever the hub lets access the server. With ``uid`` (a
    server on the hub's machine under a system user of its own), a connection to the app
    is used only if the socket that accepted it is that user's."""

    target: str  # http(s)://host:port of the app (of a range: its first port); https: over TLS, unverified
    access: str  # one of ACCESS
    token_sha256: str | None = None
    token_expires: float | None = None  # Unix time from which the token is refused; None: never
    users: bool = False
    groups: tuple[str, ...] = ()
    shared: bool = False
    cors_origins: tuple[str, ...] = ()  # "*": any origin
    strip_prefix: bool = False  # forward the path below the route's prefix only
    activity: bool = True  # requests let through count as the server's activity
    scope_cookies: bool = False  # the app's cookies get the route's path, and no Domain
    by_host: bool = False  # the route's key begins with its host (CHP's host routing)
    uid: int | None = None  # the app's listener must be this system user's (a shared host); None: any

    @property
    def address(self) -> tuple[str, int]:
        """The app's host and port."""
        target = urlsplit(self.target)
        return target.hostname, target.port

    @property
    def tls(self) -> bool:
        """Whether the app serves TLS itself (a port's ``protocol`` ``https``): the sidecar
        reaches it over TLS without verifying its certificate."""
        return self.target.startswith("https:")

    def _check_json(self) -> dict:
        data = {
            "access": self.access,
            "token_sha256": self.token_sha256,
            "token_expires": self.token_expires,
            "users": self.users,
            "groups": list(self.groups),
            "shared": self.shared,
            "cors_origins": list(self.cors_origins),
            "strip_prefix": self.strip_prefix,
            "activity": self.activity,
            "scope_cookies": self.scope_cookies,
        }
        if self.uid is not None:
            data["uid"] = self.uid
        return {**data, "by_host": True} if self.by_host else data


MAX_FOUND = 500  # characters of a RouteEntry's ``found``


@dataclass(frozen=True, kw_only=True)
class RouteEntry(PortCheck):
    """The sidecar's entry of one port of a server."""

    username: str = ""  # the server's owner
    servername: str = ""
    port: int | None = None  # the port, as the route list shows it (the sidecar does not read it)
    # what the server's in-server part found where the route cannot reach it, in words, for
    # the page of a refused connection ("python3 listens on 127.0.0.1 only ...")
    found: str = ""

    def to_json(self) -> dict:
        return {
            "target": self.target,
            **self._check_json(),
            "username": self.username,
            "servername": self.servername,
            "port": self.port,
            **({"found": self.found} if self.found else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> RouteEntry:
        found = data.get("found", "")
        if not isinstance(found, str) or len(found) > MAX_FOUND:
            raise ValueError(f"found must be a string of at most {MAX_FOUND} characters")
        return cls(**_check_from_json(data), port=data.get("port"), found=found)


@dataclass(frozen=True, kw_only=True)
class PortRange(PortCheck):
    """One range of a :class:`RangesEntry`: ports from the target's to ``last``, one check."""

    last: int

    def to_json(self) -> dict:
        return {"target": self.target, "last": self.last, **self._check_json()}


@dataclass(frozen=True, kw_only=True)
class RangesEntry:
    """The sidecar's one entry of all port ranges of a server: the segment after its key
    is the port, which must lie in one of ``ranges`` and not be one of ``excluded``."""

    ranges: tuple[PortRange, ...]
    allowed: str = ""  # all the server's allowed ports, in words (for the 404 page)
    excluded: tuple[int, ...] = ()  # ports in the ranges that are never routed
    username: str = ""
    servername: str = ""
    port: str | None = None  # the ranges, as the route list shows them (the sidecar does not read it)
    by_host: bool = False

    def to_json(self) -> dict:
        data = {
            "ranges": [r.to_json() for r in self.ranges],
            "allowed": self.allowed,
            "excluded": list(self.excluded),
            "username": self.username,
            "servername": self.servername,
            "port": self.port,
        }
        return {**data, "by_host": True} if self.by_host else data

    @classmethod
    def from_json(cls, data: dict) -> RangesEntry:
        """Each range is checked with the entry's ``username``, ``servername`` and ``by_host``."""
        ranges = data.get("ranges")
        if not isinstance(ranges, list) or not ranges:
            raise ValueError("ranges must be a non-empty list")
        server = {k: data.get(k) for k in ("username", "servername", "by_host") if k in data}
        checked = []
        for item in ranges:
            if not isinstance(item, dict) or "ranges" in item:
                raise ValueError("each range must be an object (without ranges of its own)")
            check = _check_from_json({**item, **server})
            del check["username"], check["servername"]
            first = urlsplit(check["target"]).port
            last = item.get("last")
            if isinstance(last, bool) or not isinstance(last, int) or not first < last <= 65535:
                raise ValueError(f"range of {first}: last must be a higher port, got {last!r}")
            checked.append(PortRange(**check, last=last))
        excluded = data.get("excluded") or []
        if not isinstance(excluded, list) or not all(type(p) is int for p in excluded):
            raise ValueError("excluded must be a list of ports")
        owner = data.get("username")
        return cls(
            ranges=tuple(checked),
            allowed=str(data.get("allowed", "")),
            excluded=tuple(excluded),
            username=owner if isinstance(owner, str) else "",
            servername=data.get("servername", ""),  # checked with the ranges
            port=data.get("port"),
            by_host=data.get("by_host") is True,
        )


def _check_from_json(data: dict) -> dict:
    """The fields of a :class:`RouteEntry` in ``data`` (but its port), checked."""
    text = str(data.get("target", ""))
    target = urlsplit(text)
    if target.scheme not in ("http", "https") or not target.hostname or not target.port:
        raise ValueError(f"target must be http://host:port or https://host:port, got {data.get('target')!r}")
    access = data.get("access")
    if access not in ACCESS:
        raise ValueError(f"access must be one of {ACCESS}, got {access!r}")
    token_sha256 = data.get("token_sha256")
    if token_sha256 is not None and not (isinstance(token_sha256, str) and len(token_sha256) == 64):
        raise ValueError("token_sha256 must be null or 64 hex characters")
    token_expires = data.get("token_expires")
    if token_expires is not None and (isinstance(token_expires, bool) or not isinstance(token_expires, (int, float))):
        raise ValueError("token_expires must be null or a number (Unix time)")
    owner = data.get("username")
    if access == "restricted" and not (isinstance(owner, str) and owner):
        raise ValueError("access 'restricted' needs the owner's username")
    groups = data.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise ValueError("groups must be a list of strings")
    origins = data.get("cors_origins") or []
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ValueError("cors_origins must be a list of strings")
    servername = data.get("servername", "")
    if not isinstance(servername, str):
        raise ValueError("servername must be a string")
    if data.get("shared") is True and "servername" not in data:
        raise ValueError("a shared port needs its servername (the server the hub is asked about)")
    uid = data.get("uid")
    if uid is not None and (type(uid) is not int or uid < 0):
        raise ValueError(f"uid must be null or a system user's id, got {uid!r}")
    return {
        "target": text,
        "access": access,
        "token_sha256": token_sha256,
        "token_expires": token_expires,
        "users": bool(data.get("users")),
        "groups": tuple(groups),
        "shared": data.get("shared") is True,
        "cors_origins": tuple(origins),
        "strip_prefix": bool(data.get("strip_prefix")),
        "activity": data.get("activity", True) is not False,
        "scope_cookies": data.get("scope_cookies") is True,
        "by_host": data.get("by_host") is True,
        "uid": uid,
        "username": owner if isinstance(owner, str) else "",
        "servername": servername,
    }
