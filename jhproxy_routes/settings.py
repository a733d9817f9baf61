"""A server's port settings as the token API and the page see them: read, and changed in one
call that checks, stores, audits and applies the change (``handlers.py`` keeps to HTTP). Also
the route list: every live port route, read from the proxy's and the sidecar's tables.

The answers are the API's: the settings object, or the jhproxy value of a server's mode (the
token, ``""`` for allow all, ``None`` for disabled).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from datetime import datetime, timezone

from .config import PORT_ACCESS, valid_port_access
from .errors import TargetsPending
from .listening import started_at
from .logsafe import shown
from .metrics import SERVER_UPDATE_ERRORS
from .routeapi import RouteAPIError
from .routes import RouteManager, port_choice, port_rule
from .sharing import shared_with
from .targets import has_own_network
from .tokens import ServerAccess, TokenUnreadable, read_token, with_new_token

ACTIONS = ("disabled", "allow_all", "random")
ROUTE_LIST_MAX_AGE = 5.0  # seconds the route list is answered from the tables as last read
LONGEST_LIFETIME = 10 * 365 * 86400  # seconds: ten years, the longest expires_in without token_max_age


class SettingsError(ValueError):
    """A change that cannot be made as asked (unknown key, mode, port or access)."""


class NotApplied(Exception):
    """The change is saved, but the proxy could not be updated yet."""


class PortSettings:
    """The port settings of every server, over the route manager's store and routes."""

    def __init__(self, manager: RouteManager):
        self.manager = manager
        self._route_rows: tuple[float, list[dict]] | None = None  # (monotonic time, rows)

    def routed(self, username: str, servername: str) -> bool:
        """Whether the server gets port routes at all (the route template serves it)."""
        return self.manager.template.serves(username, servername)

    # ---- reading -----------------------------------------------------------------------
    async def value(self, user, servername: str):
        """The server's jhproxy value (raises TokenUnreadable for a token kept only hashed)."""
        return await seed_value(await self.manager.access_for(user, servername))

    async def settings(self, user, servername: str, origin: str) -> dict:
        """The server's settings object; ``origin``: the hub's, for the ports' URLs."""
        return await self._settings(user, servername, await self.manager.access_for(user, servername), origin)

    async def report(self, user, servername: str, ports: dict[int, dict]) -> None:
        """Keep what the server's in-server part reports listening (``listening.py``); where
        that changes what a port's route can reach, route the server again (its page for a
        refused connection says what was found)."""
        manager = self.manager
        spawner = user.spawners[servername]
        before = manager.unreachable(user.name, servername, spawner)
        manager.listening.put(user.name, servername, ports)
        if manager.unreachable(user.name, servername, spawner) != before:
            try:
                await manager.apply_change(user, servername, await manager.access_for(user, servername))
            except (RouteAPIError, TargetsPending) as e:  # the next reconciliation does it
                manager.log.warning("jhproxy-routes: routes of %s/%s not updated yet: %s", shown(user.name), shown(servername), e)

    # ---- changing ----------------------------------------------------------------------
    async def change(self, user, servername: str, request: str | dict, *, by: str, origin: str, client: str, credential: str):
        """Check, store, audit and apply a change: ``request`` is an action (one of ACTIONS,
        answered with the new value) or ``{"mode": ..., "ports": {...}}`` (answered with the
        settings object). Raises SettingsError before anything is stored, NotApplied after."""
        manager = self.manager
        before = await manager.access_for(user, servername)
        if isinstance(request, dict):
            access, new_token = await self._changed_settings(before, request)
        else:
            access, new_token = await changed_mode(before, request)
        if manager.policy.active:  # raises Forbidden, naming the rule
            action = request.get("mode") if isinstance(request, dict) else request
            (await manager.limits(user, servername)).check(before, access, action)
        manager.store.put(user.name, servername, access)
        manager.log.info("jhproxy-routes: %s set %s/%s to mode %s", shown(by), shown(user.name), shown(servername), access.mode)
        manager.audit.record(
            "settings changed",
            user=user.name,
            by=by,
            server=servername,
            mode=[before.mode, access.mode],
            new_token=new_token is not None,
            token_expires=expiry_view(access.expires(manager.settings.token_max_age))["token_expires"],
            ports={p: [before.port_access.get(p), a] for p, a in access.port_access.items() if before.port_access.get(p) != a},
            client=client,
            credential=credential,
        )
        spawner = user.spawners[servername]
        try:
            if spawner.ready:
                await manager.apply_change(user, servername, access)
            elif spawner.active:  # starting or stopping: whatever routes it has go at once
                await manager.withdraw(user.name, servername)
        except (RouteAPIError, TargetsPending) as e:
            SERVER_UPDATE_ERRORS.labels("settings").inc()
            raise NotApplied(str(e)) from None
        if isinstance(request, dict):
            return await self._settings(user, servername, access, origin, new_token)
        return new_token if new_token is not None else await seed_value(access)

    async def _changed_settings(self, access: ServerAccess, request: dict) -> tuple[ServerAccess, str | None]:
        unknown = set(request) - {"mode", "ports", "expires_in"}
        if unknown:
            raise SettingsError(f"Unknown key(s) {sorted(unknown)}; allowed: mode, ports, expires_in.")
        new_token = None
        if "mode" in request:
            if request["mode"] not in ACTIONS:
                raise SettingsError(f"mode must be one of {', '.join(ACTIONS)}.")
            lifetime = self._lifetime(request)
            access, new_token = await changed_mode(access, request["mode"], lifetime)
        elif "expires_in" in request:
            raise SettingsError('expires_in goes with {"mode": "random"}: it is the lifetime of a new token.')
        ports = request.get("ports", {})
        if not isinstance(ports, dict):
            raise SettingsError('ports must be an object such as {"5001": "public"}.')
        allowed = {spec.key for spec in self.manager.specs}
        port_access = dict(access.port_access)
        for port, value in ports.items():
            if str(port) not in allowed:
                raise SettingsError(f"Port {shown(port)} is not in the allow-list ({', '.join(sorted(allowed))}).")
            if not valid_port_access(value):
                raise SettingsError(f"Port {shown(port)}: access must be one of {', '.join(PORT_ACCESS)}, or group:<name>.")
            port_access[str(port)] = value
        return replace(access, port_access=port_access), new_token

    def _lifetime(self, request: dict) -> int | None:
        """The lifetime asked for a new token (``expires_in``, seconds): a positive whole
        number, at most ``token_max_age``; None: none asked."""
        if "expires_in" not in request:
            return None
        value, limit = request["expires_in"], self.manager.settings.token_max_age or LONGEST_LIFETIME
        if request["mode"] != "random":
            raise SettingsError('expires_in goes with {"mode": "random"}: it is the lifetime of a new token.')
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SettingsError("expires_in must be a positive whole number of seconds.")
        if value > limit:
            why = "c.PortRoutes.token_max_age" if self.manager.settings.token_max_age else "ten years"
            raise SettingsError(f"expires_in must be at most {limit} seconds ({why}).")
        return value

    # ---- views -------------------------------------------------------------------------
    async def _settings(self, user, servername: str, access: ServerAccess, origin: str, new_token=None) -> dict:
        """The settings object of the token API (``?format=full``) and the page."""
        manager = self.manager
        token = new_token
        if token is None and access.mode == "token":
            try:
                token = await read_token(access)
            except TokenUnreadable:
                token = None
        ports = []
        limits = await manager.limits(user, servername) if manager.policy.active else None
        routed = self.routed(user.name, servername)
        shared: list[str] | None = None  # who the hub lets access the server, read once
        spawner = user.spawners[servername]
        own_network = bool(spawner.ready and has_own_network(spawner))  # a container's (False: the hub's machine)
        listening = manager.listening.current(user.name, servername, started_at(spawner)) if spawner.ready else None
        if listening:  # an app on loopback only is out of the proxy's reach in a container of its own, unless relayed
            listening = {
                port: {**entry, "reachable": entry["relayed"] or not (entry["loopback_only"] and own_network)}
                for port, entry in listening.items()
            }
        for spec in manager.specs:
            rule = port_rule(spec, access)
            if rule.shared and shared is None:
                shared = shared_with(user.db, user.spawners[servername].orm_spawner)
            if not routed:
                url = None
            elif spec.is_range:
                url = manager.public_url(manager.ranges_routespec(user.name, servername), origin) + "{port}/"
            else:
                url = manager.public_url(manager.routespec(user.name, servername, spec.port), origin)
            ports.append(
                {
                    "port": spec.key if spec.is_range else spec.port,  # 5000, or "8000-8099"
                    "name": spec.name,
                    "protocol": spec.protocol,  # how the route reaches the app: http, or https (TLS)
                    "access": port_choice(spec, access),
                    "effective_access": rule.access,
                    "admits": rule.who,
                    **({"shared_with": shared} if rule.shared else {}),
                    "url": url,
                    "allowed_access": limits.as_json(spec.key) if limits else None,
                    # None: not known (no fresh report of the in-server part); []: nothing listening
                    "listening": None if listening is None else [e for p, e in sorted(listening.items()) if spec.covers(p)],
                }
            )
        return {
            "user": user.name,
            "server": servername,
            "running": bool(spawner.ready),
            # whether the in-server part may relay to apps listening on loopback only
            "own_network": own_network,
            "loopback_relay": bool(manager.settings.loopback_relay and own_network),
            "mode": access.mode,
            "token": token,
            "token_readable": access.mode != "token" or token is not None,
            **expiry_view(access.expires(manager.settings.token_max_age)),
            "token_max_age": manager.settings.token_max_age or None,
            "allowed_modes": limits.allowed_modes(access) if limits else None,
            "ports": ports,
        }

    async def route_rows(self) -> list[dict]:
        """Every port route in the proxy, as the route list shows it, read at most every
        ``ROUTE_LIST_MAX_AGE`` seconds (raises RouteAPIError)."""
        if self._route_rows is not None and time.monotonic() - self._route_rows[0] < ROUTE_LIST_MAX_AGE:
            return self._route_rows[1]
        manager = self.manager
        chp_routes, sidecar_routes = await asyncio.gather(manager.proxy_table.get_all(), manager.sidecar.get_all())
        stored = await asyncio.to_thread(manager.store.all)
        specs = {spec.key: spec for spec in manager.specs}
        rows = []
        for path, data in sorted(chp_routes.items()):
            name, server, port = data.get("username"), data.get("servername", ""), data.get("port")
            if not isinstance(name, str):
                continue
            access = stored.get((name, server), ServerAccess())
            # a range route names its ranges: "8000-8099, 9000-9009"
            port_specs = [specs[key] for key in str(port).split(", ") if key in specs]
            via_sidecar = data.get("target") == manager.settings.sidecar_url
            # the app's address; None for a moment while the sidecar learns the route
            target = (sidecar_routes.get(path, {}) if via_sidecar else data).get("target")
            if via_sidecar and target is None and sidecar_routes.get(path, {}).get("ranges"):
                target = sidecar_routes[path]["ranges"][0]["target"].rsplit(":", 1)[0] + ":{port}"
            rows.append(
                {
                    "user": name,
                    "server": server,
                    "port": port,
                    "name": ", ".join(spec.name for spec in port_specs if spec.name),
                    "path": path,
                    "via": "sidecar" if via_sidecar else "direct",
                    "protocol": ", ".join(dict.fromkeys(spec.protocol for spec in port_specs)) or None,
                    "target": target,
                    "mode": access.mode,
                    "access": ", ".join(port_choice(spec, access) for spec in port_specs) or None,
                    "admits": sorted({who for spec in port_specs for who in port_rule(spec, access).who}),
                }
            )
        self._route_rows = (time.monotonic(), rows)
        return rows


async def changed_mode(access: ServerAccess, action: str, lifetime: int | None = None) -> tuple[ServerAccess, str | None]:
    """``access`` after an action (one of ACTIONS), and the new token if it made one (valid
    for ``lifetime`` seconds; None: until replaced, or ``token_max_age``)."""
    if action == "disabled":
        return access.disabled(), None
    if action == "allow_all":
        return access.allow_all(), None
    return await with_new_token(access, lifetime)


def expiry_view(expires: float | None) -> dict:
    """When a token expires, as the API shows it: ISO 8601 in UTC, and whole seconds left
    (0 once expired); both None for a token that does not expire (or no token)."""
    if expires is None:
        return {"token_expires": None, "token_expires_in": None}
    return {
        "token_expires": datetime.fromtimestamp(expires, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "token_expires_in": max(0, math.ceil(expires - time.time())),
    }


async def seed_value(access: ServerAccess):
    """The jhproxy value of a server's mode (raises TokenUnreadable for a hashed-only token)."""
    if access.mode == "disabled":
        return None
    if access.mode == "allow_all":
        return ""
    return await read_token(access)
