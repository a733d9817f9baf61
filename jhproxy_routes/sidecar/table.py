"""The sidecar's route table: prefix -> app address and the check to make.

Keys are CHP-style: unescaped paths without the trailing slash. Lookup is by whole path
segments, longest prefix first, on the percent-decoded request path; a request whose path
has a ``.`` or ``..`` segment (also one made of encoded characters) is refused before lookup,
so no request can climb out of the prefix it matched into another route or the hub.

An entry with ``by_host`` comes from CHP's host routing (JupyterHub's ``subdomain_host``): its
key's first segment is a host, matched against the request's Host header as CHP does
(without the port, as sent), and the rest against the path. Such an entry is only ever found
by its host, and a path entry only by its path.

An entry with ``ranges`` holds a server's port ranges: the segment after its key is the port,
which must lie in one of them (else 404 naming the allowed ports); the request then goes to
that port as if the entry were ``<key>/<port>``, with the range's check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

from ..http1 import HTTPError

ACCESS = ("public", "disabled", "restricted")
# a '.' or '..' segment, also one hidden behind an encoded slash or backslash; or a NUL
DOT_SEGMENT = re.compile(r"(^|[/\\])\.{1,2}($|[/\\])|\x00")
HOST_NAME = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")


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
    depth: int  # number of segments in the key (a host, then the path's)
    entry: str = ""  # the key of the table entry this route comes from (a range's prefix)
    last_port: int = 0  # a range: its last port (``port`` is its first)
    ranges: tuple[Route, ...] = ()  # an entry of port ranges: one Route per range
    allowed: str = ""  # an entry of port ranges: the server's allowed ports, in words
    excluded: frozenset = frozenset()  # an entry of port ranges: ports never routed
    by_host: bool = False  # the key begins with a host (CHP's host routing)
    activity: tuple[str, str] | None = None  # (user, server) whose activity a request let through is; None: not counted
    scope_cookies: bool = False  # the app's Set-Cookie gets the route's path, and no Domain (a path route)
    shared: bool = False  # restricted: logins the hub lets access the server admit
    servername: str = ""  # the owner's server the port belongs to
    token_expires: float | None = None  # Unix time from which the token is refused; None: never

    @property
    def path_depth(self) -> int:
        """Number of segments of the request path that the route's prefix takes."""
        return self.depth - self.by_host


def segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.split("/") if s)


def route_from_data(key: str, data: dict) -> Route:
    """Validate what the hub pushed; raises ValueError with the reason."""
    if "ranges" in data:
        return ranges_from_data(key, data)
    target = urlsplit(str(data.get("target", "")))
    if target.scheme != "http" or not target.hostname or not target.port:
        raise ValueError(f"target must be http://host:port, got {data.get('target')!r}")
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
    by_host = data.get("by_host") is True
    if by_host and not HOST_NAME.fullmatch(next(iter(segments(key)), "")):
        raise ValueError(f"by_host: the key {key!r} must begin with a host name (lower case)")
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
        shared=data.get("shared") is True,
        servername=servername,
        cors_any="*" in origins,
        cors_origins=frozenset(origins),
        strip_prefix=bool(data.get("strip_prefix")),
        depth=len(segments(key)),
        entry=key,
        by_host=by_host,
        scope_cookies=data.get("scope_cookies") is True and not by_host,
        token_expires=token_expires if access == "restricted" else None,
        activity=(owner, servername) if isinstance(owner, str) and owner and data.get("activity", True) is not False else None,
    )


def ranges_from_data(key: str, data: dict) -> Route:
    """An entry of port ranges: ``{"ranges": [{rule, "target": "http://host:<first>",
    "last": <last>}, ...], "allowed": ..., "excluded": [...], "username": ...}``."""
    ranges = data.get("ranges")
    if not isinstance(ranges, list) or not ranges:
        raise ValueError("ranges must be a non-empty list")
    rules = []
    for item in ranges:
        if not isinstance(item, dict) or "ranges" in item:
            raise ValueError("each range must be an object (without ranges of its own)")
        rule = route_from_data(key, {**item, **{k: data.get(k) for k in ("username", "servername", "by_host") if k in data}})
        last = item.get("last")
        if isinstance(last, bool) or not isinstance(last, int) or not rule.port < last <= 65535:
            raise ValueError(f"range of {rule.port}: last must be a higher port, got {last!r}")
        rules.append(replace(rule, last_port=last))
    excluded = data.get("excluded") or []
    if not isinstance(excluded, list) or not all(type(p) is int for p in excluded):
        raise ValueError("excluded must be a list of ports")
    first = rules[0]
    return replace(
        first,
        data=data,
        access="disabled",
        token_sha256=None,
        token_expires=None,
        ranges=tuple(rules),
        allowed=str(data.get("allowed", "")),
        excluded=frozenset(excluded),
        last_port=0,
    )


class RouteTable:
    def __init__(self, on_change=lambda key: None):
        """``on_change(key)``: an entry's data changed, or the entry is gone."""
        self.on_change = on_change
        self.routes: dict[tuple[str, ...], Route] = {}
        self.max_depth = 0
        self.by_host = 0  # how many entries are found by host

    def set(self, key: str, data: dict) -> None:
        self.set_many({key: data})

    def set_many(self, routes: dict[str, dict]) -> None:
        """Add or replace routes: all of them, or (ValueError) none."""
        checked = [route_from_data(key, data) for key, data in routes.items()]
        for route in checked:
            old = self.routes.get(segments(route.key))
            self.routes[segments(route.key)] = route
            self.by_host += route.by_host - (old is not None and old.by_host)
            self.max_depth = max(self.max_depth, route.depth)
            if old is not None and old.data != route.data:
                self.on_change(old.key)

    def has(self, key: str) -> bool:
        return segments(key) in self.routes

    def delete(self, key: str) -> bool:
        old = self.routes.pop(segments(key), None)
        if old is None:
            return False
        self.by_host -= old.by_host
        self.on_change(old.key)
        return True

    def as_dict(self) -> dict[str, dict]:
        return {route.key: route.data for route in self.routes.values()}

    def lookup(self, raw_path: str, host: str | None = None) -> tuple[Route, str] | None:
        """The route with the longest whole-segment prefix of ``raw_path`` (``host`` given:
        of ``/<host><raw_path>``, as CHP looks up with host routing, among the entries found
        by host), and the rest of the path after that prefix (raw, as the client sent it)."""
        raw_parts = [p for p in raw_path.split("/") if p]
        try:
            parts = tuple(unquote(p, errors="strict") if "%" in p else p for p in raw_parts)
        except UnicodeDecodeError:
            raise HTTPError(400, "The path is not valid UTF-8 after percent-decoding.") from None
        if host is not None:  # CHP splits the host as part of the path; it decodes only the path
            host_parts = [p for p in host.split("/") if p]
            raw_parts, parts = host_parts + raw_parts, (*host_parts, *parts)
        if any(DOT_SEGMENT.search(p) for p in parts):
            raise HTTPError(400, "Paths with '.' or '..' segments (even encoded) are not accepted.")
        for n in range(min(len(parts), self.max_depth), 0, -1):
            route = self.routes.get(parts[:n])
            if route is not None and route.by_host == (host is not None):
                if route.ranges:
                    route = port_in_ranges(route, parts[n] if n < len(parts) else None)
                    n += 1
                rest = "/" + "/".join(raw_parts[n:])
                if raw_parts[n:] and raw_path.endswith("/"):
                    rest += "/"
                return route, rest
        return None


def port_in_ranges(entry: Route, segment: str | None) -> Route:
    """The route to port ``segment`` of an entry of port ranges, or 404 naming the allowed."""
    if segment is None:
        raise HTTPError(404, f"Name a port after this path: <path>/<port>/ (allowed: {entry.allowed}).")
    # at most 5 ASCII digits, no leading zeros: one port, one route key (and one cookie path)
    digits = segment.isascii() and segment.isdigit() and len(segment) <= 5 and not segment.startswith("0")
    port = int(segment) if digits else None
    if port in entry.excluded:
        raise HTTPError(404, f"Port {port} of this server is not routed: it is the Jupyter server's own, or the hub's.")
    if port is not None:
        for rule in entry.ranges:
            if rule.port <= port <= rule.last_port:
                return replace(rule, key=f"{entry.key}/{port}", port=port, depth=entry.depth + 1, data=entry.data)
    shown = str(port) if port is not None else repr(segment[:12])
    raise HTTPError(404, f"Port {shown} is not in the allow-list of this server (allowed: {entry.allowed}).")
