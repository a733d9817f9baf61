"""Hub login for restricted ports: a browser gets in by its JupyterHub login, through the
hub's OAuth, as any JupyterHub service does it (``HubOAuth``).

1. A browser opens a restricted port without a token and without a session of ours: the
   sidecar sends it to the hub's authorize URL. A state cookie on the port's own path (and
   host) marks this browser as the one that asked; the OAuth state, sealed by the sidecar,
   names the port's origin and path.
2. The hub sends it back to ``<service prefix>oauth_callback``, which can be another host
   than the port's (``subdomain_host``: each port has a host of its own). The sidecar trades
   the code for an OAuth token (``HubOAuth.token_for_code``) and sends the browser back to the
   port with a ticket: the token sealed for that route, valid for a minute.
3. The port's route takes the ticket only with the state cookie of step 1 (from another
   browser it is worthless) and keeps the token in a cookie whose path is that one route, on
   that one host (``jhproxy-routes-session-<route hash>``, HttpOnly, SameSite=Lax; for a
   whole host behind HTTPS a ``__Host-`` cookie, which no sibling host can plant), encrypted
   and bound to the route (Fernet): worth nothing to anyone who reads it, and on no other
   route. The login starts only for a top-level page, never in a frame.
4. On each request the hub is asked whose token that is (``HubOAuth.user_for_token``,
   cached for ``cache_max_age``): a hub logout revokes the token, and so ends the session.
   A websocket or a streamed answer the session opened is asked about again as long as it
   is open (``login_recheck.py``).

The route says who gets in: its owner, any hub user, members of some groups, or (``shared``)
whoever the hub lets access the owner's server, which the hub is asked with the visitor's own
token (``may_access_server``, cached for ``cache_max_age``). The cookie,
the state cookie and the ticket are credentials of the sidecar: ``forward.py`` never lets
them reach an app.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from urllib.parse import parse_qsl, quote, urlsplit

from cryptography.fernet import Fernet, InvalidToken
from jupyterhub.utils import make_ssl_context
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httputil import url_concat
from tornado.web import create_signed_value, decode_signed_value

from ..http1 import HTTPError
from ..logsafe import shown
from .table import HOST_NAME

log = logging.getLogger("jhproxy_routes.sidecar")

SESSION_COOKIE = "jhproxy-routes-session-"
STATE_COOKIE = "jhproxy-routes-state-"
STATE_MAX_AGE = 600  # seconds a login may take at the hub
TICKET_MAX_AGE = 60  # seconds from the callback back to the port
#: the query parameter that brings a ticket to the port (taken by the sidecar, never forwarded)
TICKET_QUERY = "jhproxy_routes_login"
HOST_AND_PORT = re.compile(r"(.*?)(:[0-9]+)?")
SESSION_MAX_AGE = 14 * 86400  # seconds; the hub's own token expiry usually ends it sooner
HUB_TIMEOUT = 20  # seconds to wait for the hub's answer about a shared server
SERVER_ACCESS_CACHE_SIZE = 10_000  # answers about shared servers kept at once


def cookie_values(header: str, name: str) -> list[str]:
    """Every value of cookie ``name`` in a Cookie header (a browser may send several)."""
    values = []
    for pair in header.split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            values.append(value)
    return values


def route_prefix(raw_path: str, depth: int) -> str:
    """The path of a route as the browser writes it, and the path of its cookies: the first
    ``depth`` raw segments, without a trailing slash (``/`` for a route that is a whole
    host). A cookie of ``/ports/alice/8501`` is sent to that URL as Streamlit and Gradio
    print it (no trailing slash) and to everything below it, and never to a sibling such
    as ``/ports/alice/85012`` (RFC 6265 path-match: the next character must be ``/``).
    Sessions made before, with a trailing slash, are still found below the slash: every
    value of the cookie's name is tried."""
    prefix = "/".join([p for p in raw_path.split("/") if p][:depth])
    return f"/{prefix}" if prefix else "/"


def session_cookie_name(route_key: str) -> str:
    return SESSION_COOKIE + hashlib.sha256(route_key.encode()).hexdigest()[:16]


def cookie_name(name: str, whole_host: bool, secure: bool) -> str:
    """A cookie of a whole host (path ``/``) behind HTTPS gets the ``__Host-`` prefix: a
    page of another host below the same domain cannot then plant one for it (cookie tossing)."""
    return "__Host-" + name if secure and whole_host else name


def set_cookie(name: str, value: str, path: str, secure: bool, max_age: int | None = None) -> tuple[str, str]:
    parts = [f"{cookie_name(name, path == '/', secure)}={value}", f"Path={path}", "HttpOnly", "SameSite=Lax"]
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
        # (token hash, owner, server) -> (monotonic time until which it holds, may access)
        self._server_access: dict[tuple[str, str, str], tuple[float, bool]] = {}

    @property
    def available(self) -> bool:
        return self.auth is not None

    @property
    def cache_max_age(self) -> float:
        """Seconds an answer of the hub about a login is trusted."""
        return self.auth.cache_max_age if self.auth else 0

    # ---- a request to a restricted port --------------------------------------------------
    async def session(self, cookie_header: str, route, secure: bool) -> tuple[dict, str] | None:
        """The hub user whose session cookie for ``route`` came with the request, and the
        session's OAuth token (to ask the hub about that user), if any."""
        if not self.available or not cookie_header:
            return None
        name = cookie_name(session_cookie_name(route.key), route.path_depth == 0, secure)
        for value in cookie_values(cookie_header, name):
            token = self._open_session(value, route.key)
            if token is not None and (model := await self._user_for_token(token)) is not None:
                return model, token
        return None

    def _seal_session(self, token: str, route_key: str) -> str:
        return self._seal("session", {"route": route_key, "token": token})

    def _open_session(self, value: str, route_key: str) -> str | None:
        """The hub token in a session cookie of this route, or None (forged, altered,
        expired, made for another route, or not a session)."""
        data = self._open("session", value, SESSION_MAX_AGE)
        return data["token"] if data and hmac.compare_digest(data["route"], route_key) else None

    async def _owner_of(self, token: str) -> dict | None:
        """The hub's model of whoever holds ``token`` (cached), or None."""
        try:
            return await self.auth.user_for_token(token, use_cache=True, sync=False)
        except Exception as e:  # the hub is down or refuses us: say so, never a traceback
            log.error("asking the hub whose token this is failed: %s", shown(e))
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

    async def admits(self, route, user: dict, token: str) -> bool:
        """Whether the login of ``user`` (with its session's ``token``) gets into ``route``:
        the owner's, any user's (``users``), a member's of its groups, or (``shared``) the
        login of whoever the hub lets access the owner's server."""
        if user["name"] == route.owner or route.users or route.groups.intersection(user.get("groups") or ()):
            return True
        return route.shared and await self.may_access_server(token, route.owner, route.servername)

    async def admits_token(self, route, token: str) -> bool:
        """Whether the session whose hub token is ``token`` still gets into ``route`` (an
        open answer it let in is checked again so)."""
        user = await self._user_for_token(token)
        return user is not None and await self.admits(route, user, token)

    async def may_access_server(self, token: str, owner: str, servername: str) -> bool:
        """Whether the user holding ``token`` may access the server ``owner/servername``,
        as the hub says now (its roles, groups, shares and share codes: ``sharing.py`` in
        the hub), asked with that user's own token and trusted for ``cache_max_age``
        seconds: a revoked share closes the port within that time, and so does a hub
        logout (the token is revoked, the hub answers 403)."""
        key = (hashlib.sha256(token.encode()).hexdigest(), owner, servername)
        now = time.monotonic()
        cached = self._server_access.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        quoted = "/".join(quote(part, safe="") for part in (owner, servername))
        request = HTTPRequest(
            f"{self.auth.api_url.rstrip('/')}/jhproxy-routes/access/{quoted}",
            headers={"Authorization": f"token {token}"},
            request_timeout=HUB_TIMEOUT,
            ssl_options=make_ssl_context(self.auth.keyfile, self.auth.certfile, cafile=self.auth.client_ca)
            if self.auth.certfile
            else None,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
            if response.code not in (200, 403):
                raise ValueError(f"HTTP {response.code}")
            allowed = response.code == 200 and json.loads(response.body).get("access") is True
        except Exception as e:  # the hub is down or answers nonsense: say so, never a traceback
            log.error("asking the hub whether a login may access %s/%s failed: %s", shown(owner), shown(servername), shown(e))
            raise HTTPError(
                503, "The hub could not be asked whether this server is shared with you; try again shortly."
            ) from None
        if len(self._server_access) >= SERVER_ACCESS_CACHE_SIZE:
            self._server_access = {k: v for k, v in self._server_access.items() if v[0] > now}
            if len(self._server_access) >= SERVER_ACCESS_CACHE_SIZE:
                self._server_access.clear()
        self._server_access[key] = (now + self.auth.cache_max_age, allowed)
        return allowed

    def start(self, origin: str, target: str, cookie_path: str, secure: bool) -> list[tuple[str, str]]:
        """Headers of the redirect that sends a browser to log in at the hub, and back to
        ``target`` (the path and query it asked for) at ``origin`` (scheme://host[:port])."""
        state = secrets.token_urlsafe(16)
        name = STATE_COOKIE + state
        # the target's path as one leading slash: "//evil.example/" would be another host
        target = "/" + target.lstrip("/\\")
        sealed = self._seal("state", {"state": state, "origin": origin, "next": target})
        return [
            ("Location", url_concat(self.auth.login_url, {"state": sealed})),
            set_cookie(name, create_signed_value(self.state_key, name, state).decode(), cookie_path, secure, STATE_MAX_AGE),
            ("Cache-Control", "no-store"),
        ]

    # ---- the OAuth callback ------------------------------------------------------------------
    async def finish(self, query: str, callback_origin: str, table) -> list[tuple[str, str]]:
        """Complete a login at the callback: headers of the redirect back to the port, with
        a ticket. Raises HTTPError (400) with the reason if anything is off."""
        args = dict(parse_qsl(query))
        if "error" in args:
            log.warning("the hub refused a login: %s", shown(args.get("error_description") or args["error"]))
            raise HTTPError(400, "The hub did not log you in; open the port's URL again.")
        if not args.get("state") or not args.get("code"):
            raise HTTPError(400, "This login link is incomplete (no code or state); open the port's URL again.")
        data = self._open("state", args["state"], STATE_MAX_AGE)
        if data is None:
            raise HTTPError(400, "This login expired or is not one of ours; open the port's URL again.")
        origin, target = data["origin"], data["next"]
        route = self._route_at(table, origin, target, callback_origin)
        try:
            token = await self.auth.token_for_code(args["code"], sync=False)
        except Exception as e:
            log.warning("the hub refused an OAuth code: %s", shown(e))
            raise HTTPError(400, "The hub did not accept this login; open the port's URL again.") from None
        ticket = self._seal("ticket", {"state": data["state"], "route": route.key, "token": token, "next": target})
        return [("Location", url_concat(origin + target, {TICKET_QUERY: ticket})), ("Cache-Control", "no-store")]

    @staticmethod
    def _route_at(table, origin: str, target: str, callback_origin: str):
        """The route a login is for. The ticket goes only to a port's own origin, which the
        browser reached the callback by (its scheme and port) with the callback's own host
        for a path route, or a host the table routes by host. Whatever else the Host header
        said when the login began (``host:1@evil.example``, another port) is refused."""
        scheme, _, callback_host = callback_origin.partition("://")
        callback_name, port = HOST_AND_PORT.fullmatch(callback_host).groups(default="")
        prefix = f"{scheme}://"
        if not (origin.startswith(prefix) and origin.endswith(port)):
            raise HTTPError(400, "This login began at another address than the hub's; open the port's URL again.")
        host = origin[len(prefix) : len(origin) - len(port)]
        path = target.partition("?")[0]
        if table.by_host:
            found = table.lookup(path, host) if HOST_NAME.fullmatch(host) else None
        else:
            found = table.lookup(path) if host == callback_name else None
        if found is None:
            raise HTTPError(400, "The port this login was for is no longer routed (or not at this address).")
        return found[0]

    # ---- back at the port --------------------------------------------------------------------
    def land(self, ticket: str, cookie_header: str, route, cookie_path: str, secure: bool) -> list[tuple[str, str]]:
        """Take a ticket at the port: headers of the redirect to the page the login was
        for, with the session cookie. Only the browser that started the login (its state
        cookie) may; else HTTPError (400) with the reason."""
        data = self._open("ticket", ticket, TICKET_MAX_AGE)
        if data is None or not hmac.compare_digest(data["route"], route.key):
            raise HTTPError(400, "This login ticket expired or is for another port; open the port's URL again.")
        name = STATE_COOKIE + data["state"]
        started_here = any(
            decode_signed_value(self.state_key, name, value, max_age_days=STATE_MAX_AGE / 86400, min_version=2)
            == data["state"].encode()
            for value in cookie_values(cookie_header, cookie_name(name, cookie_path == "/", secure))
        )
        if not started_here:
            raise HTTPError(400, "This login was started in another browser (or took too long); open the port's URL again.")
        return [
            ("Location", data["next"]),
            set_cookie(session_cookie_name(route.key), self._seal_session(data["token"], route.key), cookie_path, secure),
            set_cookie(name, "", cookie_path, secure, 0),
            ("Cache-Control", "no-store"),
        ]

    def _seal(self, kind: str, data: dict) -> str:
        """``data`` encrypted and signed as a ``kind`` (state, ticket, session): one kind is
        never taken for another (a ticket is no session cookie)."""
        return self.sessions.encrypt(json.dumps({**data, "kind": kind}).encode()).decode()

    def _open(self, kind: str, sealed: str, max_age: int) -> dict | None:
        """What ``_seal`` sealed as ``kind``, if younger than ``max_age`` seconds."""
        try:
            data = json.loads(self.sessions.decrypt(sealed.encode(), ttl=max_age))
        except (InvalidToken, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("kind") == kind else None
