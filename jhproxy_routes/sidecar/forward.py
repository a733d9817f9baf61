"""What crosses between client and app: the request's head as the app gets it
(``upstream_head``: no token, no hub or sidecar cookie, the sidecar's own framing and
``X-Forwarded-*``), and what of an app's answer reaches the client (``response_headers``
under the request's ``ResponseRules``, cookies kept below a path route's prefix by
``scoped_cookie``). ``relay.py`` moves the bytes.
"""

from __future__ import annotations

from typing import NamedTuple

from ..http1 import HOP_BY_HOP, render_head
from .access import TOKEN_HEADER, filter_cookies, protected_cookie, strip_token_from_referer
from .login import route_prefix

FRAMING = {"content-length", "transfer-encoding"}
CORS_RESPONSE_HEADERS = {
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "access-control-expose-headers",
}
# never forwarded to an app: hop-by-hop headers, framing (rewritten), the token, and
# what the sidecar sets itself
UPSTREAM_DROP = frozenset(HOP_BY_HOP | FRAMING | {TOKEN_HEADER, "expect", "x-forwarded-prefix"})
# the sidecar's X-Forwarded-* always reach the app, whatever the client's Connection names
FORWARDED = frozenset({"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix"})
# spelt with underscores, these would stand for the sidecar's own in apps that read headers
# as CGI variables (WSGI: X_Forwarded_For is HTTP_X_FORWARDED_FOR too): never forwarded
UNDERSCORED = frozenset(name.replace("-", "_") for name in FORWARDED | {TOKEN_HEADER})
RESPONSE_DROP = frozenset(HOP_BY_HOP | FRAMING)
# on a port with a CORS policy of the sidecar's, the app's own CORS headers never pass
RESPONSE_DROP_CORS = RESPONSE_DROP | CORS_RESPONSE_HEADERS
# the answer to a request with the token in its query: its Referer never carries the token on
NO_REFERRER = [("Referrer-Policy", "no-referrer")]
FRAME_SELF = [("Content-Security-Policy", "frame-ancestors 'self'")]  # added to the app's own policy, never replacing it
VARY_COOKIE = [("Vary", "Cookie")]


def upstream_head(ex) -> bytes:
    """The request head for the app, from the exchange ``ex`` (route found, access checked)."""
    route = ex.route
    target = (ex.rest if route.strip_prefix else ex.path) + ("?" + ex.query if ex.query else "")
    return render_head(f"{ex.method} {target} HTTP/1.1", upstream_headers(ex))


def upstream_headers(ex) -> list[tuple[str, str]]:
    # headers the client names in Connection are hop-by-hop too, but never the Host or
    # the X-Forwarded-* the sidecar passes on
    drop = UPSTREAM_DROP | (ex.connection - FORWARDED) if ex.connection else UPSTREAM_DROP
    headers = []
    forwarded_for = None
    for name, value in ex.head.headers:
        lower = name.lower()
        if lower in drop or ("_" in lower and lower in UNDERSCORED):
            continue
        if lower == "cookie":
            value = filter_cookies(value)
            if not value:
                continue
        elif lower == "x-forwarded-for":
            forwarded_for = value
            continue
        elif lower == "referer" and "?" in value:
            value = strip_token_from_referer(value)
        headers.append((name, value))
    request, peer, path, rest = ex.head, ex.peer, ex.path, ex.rest
    headers.append(("X-Forwarded-For", f"{forwarded_for}, {peer}" if forwarded_for else peer))
    if request.get("X-Forwarded-Proto") is None:
        headers.append(("X-Forwarded-Proto", "http"))
    if request.get("X-Forwarded-Host") is None and request.get("Host"):
        headers.append(("X-Forwarded-Host", request.get("Host")))
    if ex.route.strip_prefix:
        headers.append(("X-Forwarded-Prefix", path[: len(path) - len(rest)].rstrip("/") if rest != "/" else path.rstrip("/")))
    if ex.websocket:
        headers += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    elif ex.body.kind == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
    elif ex.body.kind == "length":
        headers.append(("Content-Length", str(ex.body.length)))
    return headers


class ResponseRules(NamedTuple):
    """What an app's answer to one request loses (``drop``: lower-case header names) and gets
    of the sidecar's own (``add``)."""

    drop: frozenset
    add: list
    cookie_path: str | None = None  # the route's path: the app's cookies are put below it
    strip_prefix: bool = False  # the app's cookie paths are below the stripped prefix


def response_rules(ex) -> ResponseRules:
    """What the answer to ``ex`` gets of the sidecar's own, replacing the app's: CORS (the
    port's policy decides for every origin), no Referer with a token from the query, and
    for an answer let in by a browser's cookie, no shared cache and no framing by others."""
    route = ex.route
    own = ResponseRules(RESPONSE_DROP_CORS if route.cors_origins else RESPONSE_DROP, ex.cors)
    if ex.token is not None:
        own = ResponseRules(own.drop | {"referrer-policy"}, own.add + NO_REFERRER)
    by_session = ex.credential in ("login", "token cookie")
    if by_session:  # an answer for this browser's cookie: no shared cache may give it to others
        own = ResponseRules(own.drop, own.add + VARY_COOKIE)
    if by_session and ex.header("Sec-Fetch-Site") is None:
        # a browser that says nothing of where a request comes from (plain http, an old
        # one): a page let in by the login may still not be framed by another origin
        own = ResponseRules(own.drop, own.add + FRAME_SELF)
    if route.scope_cookies:  # the app's cookies stay on its port (a path route shares the hub's origin)
        own = own._replace(cookie_path=route_prefix(ex.path, route.path_depth), strip_prefix=route.strip_prefix)
    return own


def response_headers(response, own: ResponseRules) -> list[tuple[str, str]]:
    """The app's response headers as they may reach the client: no hop-by-hop or framing
    headers (nor any its Connection names), no cookie of the hub's or the sidecar's, and
    the sidecar's own in place of those ``own`` replaces. For every answer, a 101 too."""
    connection = response.tokens("Connection")
    drop = own.drop | connection if connection else own.drop
    headers = []
    for k, v in response.headers:
        lower = k.lower()
        if lower in drop:
            continue
        if lower == "set-cookie":
            if protected_cookie(v.split("=", 1)[0].strip()):
                continue
            if own.cookie_path is not None:
                v = scoped_cookie(v, own.cookie_path, own.strip_prefix)
        headers.append((k, v))
    return headers + own.add


def scoped_cookie(value: str, prefix: str, strip_prefix: bool = False) -> str:
    """A ``Set-Cookie`` value kept on a path route, as nginx's ``proxy_cookie_path`` does:
    its ``Path`` below ``prefix`` (the route's path, no trailing slash; a path already below
    it is kept; with ``strip_prefix`` the app's path is put below it), and no ``Domain``
    (which would send it to sibling hosts). A browser then sends it to this port only."""
    name_value, *attributes = value.split(";")
    path = None
    kept = []
    for attribute in attributes:
        key = attribute.split("=", 1)[0].strip().lower()
        if key == "path":
            path = attribute.split("=", 1)[1].strip() if "=" in attribute else ""
        elif key != "domain":
            kept.append(attribute.strip())
    if path and path.startswith("/") and strip_prefix:
        path = prefix + path.rstrip("/") if path != "/" else prefix
    elif not (path and (path == prefix or path.startswith(prefix + "/"))):
        path = prefix
    return "; ".join([name_value.strip(), f"Path={path}", *kept])
