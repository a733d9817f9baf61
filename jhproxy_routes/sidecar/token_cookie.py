"""The port token, traded for a cookie when a browser opens a port with it in the address.

A browser that opens ``<port URL>?proxy_token=...`` as a top-level page (``Sec-Fetch-Mode:
navigate``, ``Sec-Fetch-Dest: document``) is sent to the same URL without the token (it
leaves the address bar, the history and every ``Referer``) with a cookie that lets the app's
own requests after that page in: its scripts, data and websockets carry no token.

The cookie is scoped as the hub login's session cookie (the route's path, host-only,
HttpOnly, SameSite=Lax; ``Secure`` and ``__Host-`` behind HTTPS) and its value is an HMAC,
under a key of the sidecar's secret, of the route's key and the token's SHA-256: valid on
that one route, and only while the port's token is that token (a rotated or disabled token
ends it at once). Like the session cookie it is a credential of the sidecar: never passed to
an app, and used only by requests that may use a session (``Sidecar._session_may_send``).
Scripts send no fetch metadata and get the app's answer to a token in the query, as before.
"""

from __future__ import annotations

import hashlib
import hmac

from .login import cookie_name, cookie_values, set_cookie

TOKEN_COOKIE = "jhproxy-routes-token-"  # a prefix the sidecar never passes to an app (protected_cookie)


def is_navigation(request) -> bool:
    """A browser opening a page at the top (a link followed, a URL typed): never a frame,
    a script's fetch, or a client without fetch metadata."""
    return (
        request.start.method in ("GET", "HEAD")
        and request.get("Sec-Fetch-Mode") == "navigate"
        and request.get("Sec-Fetch-Dest") == "document"
    )


class TokenCookies:
    """Cookies standing for a port's token in one browser, keyed from the sidecar's secret."""

    def __init__(self, secret: str):
        self.key = hmac.new(secret.encode(), b"jhproxy-routes token cookies", hashlib.sha256).digest()

    @staticmethod
    def name(route) -> str:
        return TOKEN_COOKIE + hashlib.sha256(route.key.encode()).hexdigest()[:16]

    def value(self, route) -> str:
        """The cookie's value for ``route`` and its current token."""
        message = f"{route.key}\0{route.token_sha256}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def valid(self, cookie_header: str, route, secure: bool) -> bool:
        """Whether the request brings this route's cookie for its current token."""
        if not route.token_sha256 or not cookie_header:
            return False
        expected = self.value(route).encode()
        name = cookie_name(self.name(route), route.path_depth == 0, secure)
        return any(hmac.compare_digest(value.encode(), expected) for value in cookie_values(cookie_header, name))

    def exchange(self, route, location: str, cookie_path: str, secure: bool) -> list[tuple[str, str]]:
        """Headers of the redirect to ``location`` (the URL without the token) with the cookie."""
        return [
            ("Location", location),
            set_cookie(self.name(route), self.value(route), cookie_path, secure),
            ("Cache-Control", "no-store"),
            ("Referrer-Policy", "no-referrer"),
        ]
