"""The sidecar's route table: prefix -> app address and the check to make.

Keys are CHP-style: unescaped paths without the trailing slash. Lookup is by whole path
segments, longest prefix first, on the percent-decoded request path; a request whose path
has a ``.`` or ``..`` segment (also one made of encoded characters) is refused before lookup, so no request can climb out of the
prefix it matched into another route or the hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..http1 import HTTPError

ACCESS = ("public", "disabled", "restricted")
# a '.' or '..' segment, also one hidden behind an encoded slash or backslash; or a NUL
DOT_SEGMENT = re.compile(r"(^|[/\\])\.{1,2}($|[/\\])|\x00")


@dataclass(frozen=True)
class Route:
    key: str
    data: dict  # as the hub sent it (returned by GET)
    host: str
    port: int
    access: str
    token_sha256: str | None  # restricted: a valid token admits
    owner: str  # restricted: the owner's hub login admits
    users: bool  # restricted: any hub user's login admits
    groups: frozenset  # restricted: logins of members admit
    cors_any: bool
    cors_origins: frozenset
    strip_prefix: bool
    depth: int  # number of path segments in the prefix


def segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.split("/") if s)


def route_from_data(key: str, data: dict) -> Route:
    """Validate what the hub pushed; raises ValueError with the reason."""
    target = urlsplit(str(data.get("target", "")))
    if target.scheme != "http" or not target.hostname or not target.port:
        raise ValueError(f"target must be http://host:port, got {data.get('target')!r}")
    access = data.get("access")
    if access not in ACCESS:
        raise ValueError(f"access must be one of {ACCESS}, got {access!r}")
    token_sha256 = data.get("token_sha256")
    if token_sha256 is not None and not (isinstance(token_sha256, str) and len(token_sha256) == 64):
        raise ValueError("token_sha256 must be null or 64 hex characters")
    owner = data.get("username")
    if access == "restricted" and not (isinstance(owner, str) and owner):
        raise ValueError("access 'restricted' needs the owner's username")
    groups = data.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise ValueError("groups must be a list of strings")
    origins = data.get("cors_origins") or []
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ValueError("cors_origins must be a list of strings")
    return Route(
        key=key,
        data=data,
        host=target.hostname,
        port=target.port,
        access=access,
        token_sha256=token_sha256 if access == "restricted" else None,
        owner=owner or "",
        users=bool(data.get("users")),
        groups=frozenset(groups),
        cors_any="*" in origins,
        cors_origins=frozenset(origins),
        strip_prefix=bool(data.get("strip_prefix")),
        depth=len(segments(key)),
    )


class RouteTable:
    def __init__(self):
        self.routes: dict[tuple[str, ...], Route] = {}
        self.max_depth = 0

    def set(self, key: str, data: dict) -> None:
        self.set_many({key: data})

    def set_many(self, routes: dict[str, dict]) -> None:
        """Add or replace routes: all of them, or (ValueError) none."""
        checked = [route_from_data(key, data) for key, data in routes.items()]
        for route in checked:
            self.routes[segments(route.key)] = route
            self.max_depth = max(self.max_depth, route.depth)

    def delete(self, key: str) -> bool:
        return self.routes.pop(segments(key), None) is not None

    def as_dict(self) -> dict[str, dict]:
        return {route.key: route.data for route in self.routes.values()}

    def lookup(self, raw_path: str) -> tuple[Route, str] | None:
        """The route with the longest whole-segment prefix of ``raw_path``, and the rest of
        the path after that prefix (raw, as the client sent it)."""
        raw_parts = [p for p in raw_path.split("/") if p]
        try:
            parts = tuple(unquote(p, errors="strict") if "%" in p else p for p in raw_parts)
        except UnicodeDecodeError:
            raise HTTPError(400, "The path is not valid UTF-8 after percent-decoding.") from None
        if any(DOT_SEGMENT.search(p) for p in parts):
            raise HTTPError(400, "Paths with '.' or '..' segments (even encoded) are not accepted.")
        for n in range(min(len(parts), self.max_depth), 0, -1):
            route = self.routes.get(parts[:n])
            if route is not None:
                rest = "/" + "/".join(raw_parts[n:])
                if raw_parts[n:] and raw_path.endswith("/"):
                    rest += "/"
                return route, rest
        return None
