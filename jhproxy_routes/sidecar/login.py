"""Hub login for restricted ports: a browser gets in by its JupyterHub login, through the
hub's OAuth, as any JupyterHub service does it (``HubOAuth``).

1. A browser opens a restricted port without a token and without a session of ours: the
   sidecar sends it to the hub's authorize URL, with a state whose cookie lives only on
   the callback path.
2. The hub sends it back to ``<service prefix>oauth_callback``; the sidecar trades the code
   for an OAuth token (``HubOAuth.token_for_code``) and keeps it in a cookie whose path is
   that one route (``jhproxy-routes-session-<route hash>``, HttpOnly, SameSite=Lax), encrypted
   and bound to the route (Fernet): worth nothing to anyone who reads it, and on no other
   route. The login starts only for a top-level page, never in a frame.
3. On each request the hub is asked whose token that is (``HubOAuth.user_for_token``,
   cached for ``cache_max_age``): a hub logout revokes the token, and so ends the session.

The route says who gets in: its owner, any hub user, or members of some groups. The cookie
is a credential of the sidecar: ``server.py`` never lets it reach an app.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from urllib.parse import parse_qsl, urlsplit

from cryptography.fernet import Fernet, InvalidToken
from tornado.httputil import url_concat
from tornado.web import create_signed_value, decode_signed_value

from ..http1 import HTTPError

log = logging.getLogger("jhproxy_routes.sidecar")

SESSION_COOKIE = "jhproxy-routes-session-"
STATE_COOKIE = "jhproxy-routes-state-"
STATE_MAX_AGE = 600  # seconds a login may take at the hub
SESSION_MAX_AGE = 14 * 86400  # seconds; the hub's own token expiry usually ends it sooner


def cookie_values(header: str, name: str) -> list[str]:
    """Every value of cookie ``name`` in a Cookie header (a browser may send several)."""
    values = []
    for pair in header.split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            values.append(value)
    return values


def route_prefix(raw_path: str, depth: int) -> str:
    """The path of a route as the browser writes it: the first ``depth`` raw segments."""
    return "/" + "/".join([p for p in raw_path.split("/") if p][:depth]) + "/"


def session_cookie_name(route_key: str) -> str:
    return SESSION_COOKIE + hashlib.sha256(route_key.encode()).hexdigest()[:16]


def set_cookie(name: str, value: str, path: str, secure: bool, max_age: int | None = None) -> tuple[str, str]:
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Lax"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return ("Set-Cookie", "; ".join(parts))


class HubLogin:
    """Sessions of hub users on restricted ports. ``auth`` is a configured ``HubOAuth``,
    or None when the sidecar runs without the hub's service environment (tokens only)."""

    def __init__(self, secret: str, auth=None):
        # cookie keys are derived from a secret the hub gives every sidecar replica
        self.state_key = hmac.new(secret.encode(), b"jhproxy-routes cookies", hashlib.sha256).hexdigest()
        session_key = hmac.new(secret.encode(), b"jhproxy-routes sessions", hashlib.sha256).digest()
        self.sessions = Fernet(base64.urlsafe_b64encode(session_key))
        self.auth = auth
        self.callback_path = urlsplit(auth.oauth_redirect_uri).path if auth else None

    @property
    def available(self) -> bool:
        return self.auth is not None

    # ---- a request to a restricted port --------------------------------------------------
    async def user(self, cookie_header: str, route) -> dict | None:
        """The hub user whose session cookie for ``route`` came with the request, if any."""
        if not self.available or not cookie_header:
            return None
        for value in cookie_values(cookie_header, session_cookie_name(route.key)):
            token = self._open_session(value, route.key)
            if token is not None and (model := await self._user_for_token(token)) is not None:
                return model
        return None

    def _seal_session(self, token: str, route_key: str) -> str:
        return self.sessions.encrypt(json.dumps({"route": route_key, "token": token}).encode()).decode()

    def _open_session(self, value: str, route_key: str) -> str | None:
        """The hub token in a session cookie of this route, or None (forged, altered,
        expired, or made for another route)."""
        try:
            data = json.loads(self.sessions.decrypt(value.encode(), ttl=SESSION_MAX_AGE))
        except (InvalidToken, ValueError):
            return None
        return data["token"] if hmac.compare_digest(data.get("route", ""), route_key) else None

    async def _owner_of(self, token: str) -> dict | None:
        """The hub's model of whoever holds ``token`` (cached), or None."""
        try:
            return await self.auth.user_for_token(token, use_cache=True, sync=False)
        except Exception as e:  # the hub is down or refuses us: say so, never a traceback
            log.error("asking the hub whose token this is failed: %s", e)
            raise HTTPError(503, "The hub could not be asked who you are; try again shortly.") from None

    async def token_has_scope(self, token: str, scope: str) -> bool:
        """Whether a JupyterHub token (of a user or a service) carries ``scope``."""
        if not self.available:
            return False
        model = await self._owner_of(token)
        return bool(model) and scope in model.get("scopes", ())

    async def _user_for_token(self, token: str) -> dict | None:
        model = await self._owner_of(token)
        if not model or model.get("kind", "user") != "user":
            return None
        if self.auth.access_scopes and not self.auth.check_scopes(self.auth.access_scopes, model):
            return None
        return model

    @staticmethod
    def admits(route, user: dict) -> bool:
        return (
            user["name"] == route.owner
            or route.users
            or bool(route.groups.intersection(user.get("groups") or ()))
        )

    def start(self, target: str, secure: bool) -> list[tuple[str, str]]:
        """Headers of the redirect that sends a browser to log in at the hub, and back to
        ``target`` (the path and query it asked for)."""
        state = secrets.token_urlsafe(16)
        name = STATE_COOKIE + state
        signed = create_signed_value(self.state_key, name, json.dumps({"state": state, "next": target})).decode()
        return [
            ("Location", url_concat(self.auth.login_url, {"state": state})),
            set_cookie(name, signed, self.callback_path, secure, STATE_MAX_AGE),
            ("Cache-Control", "no-store"),
        ]

    # ---- the OAuth callback ------------------------------------------------------------------
    async def finish(self, query: str, cookie_header: str, table, secure: bool) -> list[tuple[str, str]]:
        """Complete a login at the callback: headers of the redirect back to the port, with
        the session cookie. Raises HTTPError (400) with the reason if anything is off."""
        args = dict(parse_qsl(query))
        if "error" in args:
            log.warning("the hub refused a login: %s", args.get("error_description") or args["error"])
            raise HTTPError(400, "The hub did not log you in; open the port's URL again.")
        state, code = args.get("state", ""), args.get("code", "")
        if not state or not code:
            raise HTTPError(400, "This login link is incomplete (no code or state); open the port's URL again.")
        name = STATE_COOKIE + state
        stored = None
        for value in cookie_values(cookie_header, name):
            stored = decode_signed_value(self.state_key, name, value, max_age_days=STATE_MAX_AGE / 86400, min_version=2) or stored
        if stored is None:
            raise HTTPError(400, "This login expired or was started in another browser; open the port's URL again.")
        data = json.loads(stored)
        if not hmac.compare_digest(data["state"], state):
            raise HTTPError(400, "The login state does not match; open the port's URL again.")
        target = data["next"]
        path = target.partition("?")[0]
        found = table.lookup(path) if path.startswith("/") and not path.startswith("//") else None
        if found is None:
            raise HTTPError(400, "The port this login was for is no longer routed.")
        route = found[0]
        try:
            token = await self.auth.token_for_code(code, sync=False)
        except Exception as e:
            log.warning("the hub refused an OAuth code: %s", e)
            raise HTTPError(400, "The hub did not accept this login; open the port's URL again.") from None
        return [
            ("Location", target),
            set_cookie(session_cookie_name(route.key), self._seal_session(token, route.key), route_prefix(path, route.depth), secure),
            set_cookie(name, "", self.callback_path, secure, 0),
            ("Cache-Control", "no-store"),
        ]
