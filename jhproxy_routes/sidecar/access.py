"""Who may pass: ``Access`` decides for every request to a route, with the rules below.

The port token (``X-Proxy-Token`` or the ``proxy_token`` query parameter) and its expiry;
the token's cookie (``token_cookie.py``) and the hub login (``login.py``), both used only by
requests from the port's own origin or by top-level pages (no CSRF or framing from a
sibling port); CORS; the client's address behind CHP and trusted front proxies; and what
of a request's credentials never reaches an app (the hub's and the sidecar's cookies, the
token in ``Referer``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from urllib.parse import unquote_plus, urlsplit

from ..http1 import Answer, HTTPError
from ..tokens import token_matches
from .login import route_prefix
from .token_cookie import is_navigation

TOKEN_HEADER = "x-proxy-token"
TOKEN_QUERY = "proxy_token"
PROTECTED_COOKIE_PREFIXES = ("jupyterhub-", "jhproxy-routes")
PROTECTED_COOKIES = {"_xsrf"}


def protected_cookie(name: str) -> bool:
    """A cookie of the hub or the sidecar: never sent to an app, never set by one. Also as
    ``__Host-``/``__Secure-``: the sidecar's behind HTTPS, and with JupyterHub's
    ``cookie_host_prefix_enabled`` the hub's and its services' OAuth cookies
    (``__Host-service-<name>``), which then have path ``/``."""
    lower = name.lower()
    if lower.startswith("__host-"):
        return protected_cookie(name[len("__host-") :]) or name[len("__host-") :].startswith("service-")
    if lower.startswith("__secure-"):
        return protected_cookie(name[len("__secure-") :])
    return name.startswith(PROTECTED_COOKIE_PREFIXES) or name in PROTECTED_COOKIES


def filter_cookies(value: str) -> str:
    """The Cookie header without the hub's and the sidecar's cookies."""
    kept = [pair.strip() for pair in value.split(";")]
    return "; ".join(p for p in kept if p and not protected_cookie(p.split("=", 1)[0].strip()))


def split_query(query: str, name: str = TOKEN_QUERY) -> tuple[str | None, str]:
    """The query parameter ``name`` (the first if several), and the query without any of
    them (the rest byte for byte)."""
    if "%" not in query and name.rsplit("_", 1)[-1] not in query.lower():  # the common case, quickly
        return None, query
    found, kept = None, []
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if unquote_plus(key) == name:
            found = unquote_plus(value) if found is None else found
        else:
            kept.append(pair)
    return found, "&".join(kept)


def client_address(request, peer: str, trusted_proxies=()) -> str:
    """The client's address: the last ``X-Forwarded-For`` entry, which CHP appends (earlier
    entries come from the client and can be anything), else the connection's peer. When
    that is one of ``trusted_proxies`` (networks of front proxies), the entry it added before
    is believed instead, and so on: the rightmost entry that is not a trusted proxy."""
    forwarded = request.get_all("X-Forwarded-For")
    if not forwarded:
        return peer
    if not trusted_proxies:
        return forwarded[-1].rsplit(",", 1)[-1].strip()
    entries = [e.strip() for value in forwarded for e in value.split(",")]
    for entry in reversed(entries):
        address = ip_of(entry)
        if address is None:
            return entry  # not an address: no proxy of ours wrote it, so it is the client's word
        if not any(address in network for network in trusted_proxies):
            return str(address)
    return entries[0]


def ip_of(entry: str):
    """The IP address in an X-Forwarded-For entry (``1.2.3.4``, ``1.2.3.4:5678``,
    ``[::1]:80``), IPv4-mapped IPv6 as IPv4 (a dual-stack CHP writes ``::ffff:10.1.2.3``);
    None if there is none."""
    text = entry[1:].partition("]")[0] if entry.startswith("[") else entry.partition(":")[0] if entry.count(":") == 1 else entry
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def parse_networks(items) -> tuple:
    """Networks from addresses and CIDRs (``trusted_proxies``)."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def token_verdict(presented: str, route) -> str:
    """The one check of a presented port token: ``valid``, ``token expired`` (the right
    token after its ``token_expires``, by the sidecar's own clock) or ``wrong token``. The
    hash is compared in constant time first, whatever the expiry."""
    if not token_matches(presented, route.token_sha256):
        return "wrong token"
    return "token expired" if token_expired(route) else "valid"


def token_expired(route) -> bool:
    """Whether the route's token is past its ``token_expires`` (the sidecar's clock)."""
    return route.token_expires is not None and time.time() >= route.token_expires


def strip_token_from_referer(value: str) -> str:
    """A Referer without the ``proxy_token`` query parameter."""
    url, mark, query = value.partition("?")
    if not mark:
        return value
    token, query = split_query(query)
    return value if token is None else url + ("?" + query if query else "")


def wants_html(request) -> bool:
    """A browser opening a page (not a script's fetch, which asks for */* or JSON)."""
    return "text/html" in request.get("Accept", "")


FETCH_METADATA = ("Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest")


def has_fetch_metadata(request) -> bool:
    """Whether the browser says where a request comes from (``Sec-Fetch-*``: it does over
    HTTPS and to localhost, not over plain HTTP to other hosts)."""
    return any(request.get(name) is not None for name in FETCH_METADATA)


def page_navigation(request) -> bool:
    """A browser opening a page with GET or HEAD (a link followed, a URL typed, a redirect),
    as far as its headers show it. With fetch metadata (HTTPS, localhost): a top-level
    document (``Sec-Fetch-Mode: navigate``, ``Sec-Fetch-Dest: document``), never a frame.
    Without it (plain HTTP to any other host, an old browser): ``Upgrade-Insecure-Requests:
    1``, which browsers send with navigations only and no page's script can set (fetch drops
    it); such a navigation may still be a frame's, so what it gets is not framed
    (``forward.FRAME_SELF``)."""
    if has_fetch_metadata(request):
        return is_navigation(request)
    return request.start.method in ("GET", "HEAD") and request.get("Upgrade-Insecure-Requests") == "1"


def origin_of(url: str | None) -> str | None:
    """scheme://host[:port] of a URL (a ``Referer``), in lower case; None if it has none."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else None


LIMITED_PAUSE = 1.0  # seconds before a 429 answers a wrong token


class Access:
    """The access check of one sidecar: ``quick`` when the request carries what decides at
    once, else ``check`` (which may ask the hub); ``trade_token`` and ``preflight`` for the
    answers the sidecar gives itself."""

    def __init__(self, login, token_cookies, limiter, denials, metrics, trusted_proxies=()):
        self.login = login
        self.token_cookies = token_cookies  # None: tokens in a query are never traded for cookies
        self.limiter = limiter
        self.denials = denials
        self.metrics = metrics
        self.trusted_proxies = trusted_proxies  # ip_network objects: front proxies whose X-Forwarded-For is believed

    @staticmethod
    def quick(ex) -> str | None:
        """The credential that lets ``ex`` in without more ado (``""`` on a public port,
        ``token`` for the right, unexpired token), or None: ``check`` decides."""
        route = ex.route
        if route.access == "public":
            return ""
        token = ex.header(TOKEN_HEADER) or ex.token
        if token and route.token_sha256 and route.access != "disabled" and token_verdict(token, route) == "valid":
            return "token"
        return None

    async def check(self, ex) -> str | Answer:
        """For a request ``quick`` did not let in: let it through, saying by what (``token
        cookie`` or ``login``), or the redirect to log in at the hub; or raise 403 or 429
        (recorded in the audit log)."""
        route, token = ex.route, ex.header(TOKEN_HEADER) or ex.token
        client = client_address(ex.head, ex.peer, self.trusted_proxies)

        def deny(status: int, kind: str, message: str, headers=(), detail: str = ""):
            """The refusal, recorded: ``kind`` (a metric label, one of a few) and ``detail``."""
            self.record_denial(ex, kind, client, reason=detail or kind)
            return HTTPError(status, message, [*ex.cors, *headers])

        if route.access == "disabled":
            raise deny(403, "port disabled", "Unauthorized access (disabled): this port is turned off.")
        if token and route.token_sha256:
            # wrong tokens (and expired ones, refused alike) are counted per server token,
            # whichever of its ports is tried; the right one always gets in (``quick``: many
            # clients can share one address)
            verdict = token_verdict(token, route)
            wait = self.limiter.retry_after(client, route.token_sha256)
            if wait:
                await asyncio.sleep(LIMITED_PAUSE)  # a guesser over the limit: slowed as well as refused
                raise deny(
                    429,
                    "rate limited",
                    f"Too many wrong tokens from {client}; try again in {wait}s.",
                    [("Retry-After", str(wait))],
                )
            wrong_token = verdict + (" (now rate limited)" if self.limiter.failed(client, route.token_sha256) else "")
        else:
            verdict = wrong_token = ""
        cookies, secure = ex.header("Cookie", ""), ex.secure
        if self.token_cookies and self.token_cookies.valid(cookies, route, secure) and not token_expired(route):
            if not self.session_may_send(ex):
                message = "Refused: the port token's cookie is used only by the port's own pages; send an X-Proxy-Token."
                raise deny(403, "cross-site token cookie", message)
            return "token cookie"
        session = await self.login.session(cookies, route, secure)
        if session is not None:
            user, login_token = session
            if not self.session_may_send(ex):
                message = (
                    "Refused: this request came from another page than the port's own (a form, frame, script or"
                    " websocket of another site or port), and your hub login is not used for those. Open the port's"
                    " URL directly, or send an X-Proxy-Token."
                )
                raise deny(403, "cross-site login", message)
            if await self.login.admits(route, user, login_token):
                ex.login_token = login_token
                return "login"
            detail = f"login of {user['name']} not admitted" + (f"; {wrong_token}" if wrong_token else "")
            message = f"Unauthorized access: you are logged in as {user['name']}, and this port is not open to you."
            raise deny(403, "login not admitted", message, detail=detail)
        # a page opened by the browser (never a frame where its metadata tells; never an
        # image, script or fetch of another page, which may not even begin a login)
        browser_visit = ex.wants_html and page_navigation(ex.head) and not ex.websocket
        if browser_visit and not token and self.login.available:
            cookie_path = route_prefix(ex.path, route.path_depth)
            return Answer(302, "Log in at the hub first.", self.login.start(ex.origin, ex.target, cookie_path, secure))
        needed = (
            "a valid X-Proxy-Token or a hub login" if route.token_sha256 else "a hub login (tokens are disabled for this port)"
        )
        kind = verdict if wrong_token else "token for a port without tokens" if token else "no credentials"
        raise deny(403, kind, f"Unauthorized access: {needed} is required.", detail=wrong_token)

    def record_denial(self, ex, kind: str, client: str | None = None, **fields) -> None:
        """Count a refusal of ``ex`` under ``kind`` (a metric label, one of a few) and write
        it to the audit log (the reason: ``kind`` unless ``fields`` say more)."""
        route = ex.route
        self.metrics.denied(kind)
        self.denials.record(
            client or client_address(ex.head, ex.peer, self.trusted_proxies),
            **{"reason": kind, **fields},
            route=route.key,
            owner=route.owner,
            port=route.port,
            method=ex.method[:20],
            path=ex.path[:300],
        )

    def trade_token(self, ex) -> Answer | None:
        """A browser opening the port at the top with the right token in the query: the
        redirect to the same URL without it, with the token's cookie (``token_cookie.py``).
        Anything else (a script, a frame, a wrong token): None, and it goes on as before."""
        route = ex.route
        if self.token_cookies and route.token_sha256 and is_navigation(ex.head) and token_verdict(ex.token, route) == "valid":
            location = "/" + ex.path.lstrip("/\\") + ("?" + ex.query if ex.query else "")  # "//host/" would be another host
            cookie_path = route_prefix(ex.path, route.path_depth)
            headers = self.token_cookies.exchange(route, location, cookie_path, ex.secure)
            return Answer(302, "The token is kept in a cookie of this port.", headers)
        return None

    @staticmethod
    def session_may_send(ex) -> bool:
        """Whether a request may use the session cookie (CSRF, framing, reading by
        ``<script>``): if it comes from the port's own origin (``Sec-Fetch-Site``,
        ``Origin``, or without fetch metadata a ``Referer`` of that origin: the port's own
        page's images and scripts over plain HTTP); otherwise only as a page the browser
        opens (``page_navigation``). A request that shows none of these (another page's
        ``<img>``, ``<script>`` or no-cors fetch over plain HTTP, where browsers send no
        fetch metadata) is refused although it carries the cookie. Every port host is the
        same *site*, so SameSite=Lax alone would let a sibling port's requests in."""
        origin = ex.header("Origin")
        if ex.header("Sec-Fetch-Site") == "same-origin" or (origin is not None and origin == ex.origin):
            return True
        if origin is not None:
            return False
        if not has_fetch_metadata(ex.head) and origin_of(ex.header("Referer")) == ex.origin.lower():
            return True
        return page_navigation(ex.head)

    @staticmethod
    def cors_headers(route, origin: str | None) -> list[tuple[str, str]]:
        if origin is None:
            return []
        if route.cors_any:
            return [("Access-Control-Allow-Origin", "*")]
        if origin in route.cors_origins:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return []

    @staticmethod
    def preflight(ex) -> list[tuple[str, str]]:
        """The headers of the 204 answering a CORS preflight of an allowed origin."""
        if not ex.cors:
            raise HTTPError(403, "This origin may not call this port (CORS).")
        asked = ex.header("Access-Control-Request-Headers", "").strip()
        return [
            *ex.cors,
            ("Access-Control-Allow-Methods", ex.header("Access-Control-Request-Method")),
            ("Access-Control-Allow-Headers", ", ".join(h for h in ["X-Proxy-Token", asked] if h)),
            ("Access-Control-Max-Age", "600"),
        ]
