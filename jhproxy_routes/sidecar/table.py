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
from urllib.parse import unquote

from ..contract import PortCheck, RangesEntry, RouteEntry
from ..http1 import HTTPError

# a '.' or '..' segment, also one hidden behind an encoded slash or backslash; or a NUL
DOT_SEGMENT = re.compile(r"(^|[/\\])\.{1,2}($|[/\\])|\x00")
HOST_NAME = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")


@dataclass(frozen=True)
class Route:
    key: str
    data: dict  # the entry as the hub sent it (returned by GET)
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
    uid: int | None = None  # the app's listener must be this system user's (a shared host); None: any
    found: str = ""  # what the server's in-server part found where the route cannot reach (contract.RouteEntry)
    tls: bool = False  # the app serves TLS itself: reached over TLS, its certificate unverified

    @property
    def upstream(self) -> tuple[str, int, int | None, bool]:
        """Where a request goes, as the pool of app connections keys it: the app's host and
        port, whose listener a connection there must have reached, and whether it speaks TLS
        (a plain connection never serves a TLS route, nor the other way round)."""
        return self.host, self.port, self.uid, self.tls

    @property
    def path_depth(self) -> int:
        """Number of segments of the request path that the route's prefix takes."""
        return self.depth - self.by_host


def segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.split("/") if s)


def route_from_data(key: str, data: dict) -> Route:
    """Validate what the hub pushed (an entry of ``contract.py``); raises ValueError with the reason."""
    if "ranges" in data:
        return ranges_route(key, data, RangesEntry.from_json(data))
    entry = RouteEntry.from_json(data)
    return replace(check_route(key, data, entry, entry.username, entry.servername), found=entry.found)


def check_route(key: str, data: dict, check: PortCheck, owner: str, servername: str) -> Route:
    """The route of one port's (or one range's) check, of ``owner``'s server."""
    if check.by_host and not HOST_NAME.fullmatch(next(iter(segments(key)), "")):
        raise ValueError(f"by_host: the key {key!r} must begin with a host name (lower case)")
    host, port = check.address
    restricted = check.access == "restricted"
    return Route(
        key=key,
        data=data,
        host=host,
        port=port,
        access=check.access,
        token_sha256=check.token_sha256 if restricted else None,
        owner=owner,
        users=check.users,
        groups=frozenset(check.groups),
        shared=check.shared,
        servername=servername,
        cors_any="*" in check.cors_origins,
        cors_origins=frozenset(check.cors_origins),
        strip_prefix=check.strip_prefix,
        depth=len(segments(key)),
        entry=key,
        by_host=check.by_host,
        scope_cookies=check.scope_cookies and not check.by_host,
        token_expires=check.token_expires if restricted else None,
        activity=(owner, servername) if owner and check.activity else None,
        uid=check.uid,
        tls=check.tls,
    )


def ranges_route(key: str, data: dict, entry: RangesEntry) -> Route:
    """The route of an entry of port ranges: the first range's, holding one per range."""
    rules = tuple(replace(check_route(key, data, r, entry.username, entry.servername), last_port=r.last) for r in entry.ranges)
    return replace(
        rules[0],
        access="disabled",
        token_sha256=None,
        token_expires=None,
        ranges=rules,
        allowed=entry.allowed,
        excluded=frozenset(entry.excluded),
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
