"""Who may pass: the sidecar's access rules as plain functions.

The port token (``X-Proxy-Token`` or the ``proxy_token`` query parameter) and its expiry,
the client's address behind CHP and trusted front proxies, and what of a request's
credentials never reaches an app (the hub's and the sidecar's cookies, the token in
``Referer``). ``server.py`` applies them to every request.
"""

from __future__ import annotations

import ipaddress
import time
from urllib.parse import unquote_plus

from ..tokens import token_matches

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
