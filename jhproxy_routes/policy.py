"""The admin's policy: which visibilities and token modes users may choose.

``c.PortRoutes.allowed_access`` (a list, or a hook called with the user and the port),
a port's own ``allowed_access`` in ``c.PortRoutes.ports``, and ``c.PortRoutes.allowed_modes``
(a list, or a hook called with the user and the server's name) give what a user may set;
``Limits`` holds the answer for one server. A change outside it is refused (``Forbidden``,
naming the rule). Settings made before the policy was tightened are *narrowed*: each to the
most open setting the policy still allows on a lower level than it, along two orders (most
open first): the levels of visibilities of ``config.ACCESS_LEVELS`` (``public`` > ``users`` >
``shared`` and groups > ``server`` > ``owner`` > ``disabled``; a group is never chosen when
narrowing: which one would be a guess), and the modes ``allow_all`` > ``random`` >
``disabled``. What the admin set is always allowed: a port's own ``access``, the server's
``default_startup_behavior``, and ``disabled`` for either (closing is never forbidden).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from jupyterhub.utils import maybe_future

from .config import ACCESS_LEVELS, GROUP_PREFIX, PORT_ACCESS, PortSpec, takes_token, valid_port_access
from .logsafe import shown
from .tokens import ServerAccess, with_new_token

ANY_GROUP = GROUP_PREFIX + "*"
MODES = ("allow_all", "random", "disabled")  # most open first; a stored mode "token" is "random"


class Forbidden(ValueError):
    """A change the admin's policy does not allow; the message names the rule."""


def openness(access: str) -> int:
    """How open a visibility is: its level in ``ACCESS_LEVELS``, higher is more open."""
    for rank, level in enumerate(reversed(ACCESS_LEVELS)):
        if access in level or (access.startswith(GROUP_PREFIX) and GROUP_PREFIX in level):
            return rank
    raise ValueError(f"unknown visibility {access!r}")


def mode_action(mode: str) -> str:
    """A stored mode as the action that sets it (``token`` -> ``random``)."""
    return "random" if mode == "token" else mode


def valid_allowed_access(value) -> bool:
    return value == ANY_GROUP or valid_port_access(value)


@dataclass(frozen=True)
class Limits:
    """What one user may set on one server: ``modes`` (actions), and per port key the
    visibilities allowed (None: any) and the rule that says so (for messages)."""

    modes: frozenset | None
    access: dict  # port key -> frozenset | None
    mode_rule: str = "c.PortRoutes.allowed_modes"
    access_rules: dict | None = None  # port key -> rule
    defaults: dict | None = None  # port key -> the admin's visibility (``access`` in ``ports``)
    startup_mode: str = ""  # the server's default_startup_behavior (the admin's)

    def mode_allowed(self, action: str) -> bool:
        return self.modes is None or action in self.modes

    def mode_refusal(self, action: str, access: ServerAccess) -> str | None:
        """Why the token mode ``action`` is not allowed with the ports' visibilities of
        ``access`` (None: it is): not among the modes, or ``allow_all`` where it would let
        anyone into a port that may not be public (a port that takes the token takes
        anyone in that mode), unless the admin made it the startup mode."""
        if not self.mode_allowed(action):
            return f"The token mode {action} is not allowed here ({self.mode_rule}); allowed: {', '.join(sorted(self.modes))}."
        if action != "allow_all" or self.startup_mode == "allow_all":
            return None
        opened = [
            key
            for key, default in (self.defaults or {}).items()
            if takes_token(access.port_access.get(key, default)) and not self.access_allowed(key, "public")
        ]
        if not opened:
            return None
        rules = sorted({(self.access_rules or {}).get(key, "c.PortRoutes.allowed_access") for key in opened})
        return (
            f"The token mode allow_all would let anyone into port {', '.join(opened)}, where the visibility public"
            f" is not allowed ({'; '.join(rules)}); make those ports owner-only first, or choose another mode."
        )

    def access_allowed(self, key: str, value: str) -> bool:
        allowed = self.access.get(key)
        if allowed is None or value in allowed:
            return True
        return value.startswith(GROUP_PREFIX) and ANY_GROUP in allowed

    def check(self, before: ServerAccess, after: ServerAccess, action: str | None) -> None:
        """Raise Forbidden for an asked mode (``action``) or a port's visibility that changed
        to something not allowed."""
        # the mode asked, or the mode kept when ports change under allow_all
        mode = action if action is not None else mode_action(after.mode) if after.mode == "allow_all" else None
        refusal = mode and self.mode_refusal(mode, after)
        if refusal:
            raise Forbidden(refusal)
        for key, value in after.port_access.items():
            if before.port_access.get(key) != value and not self.access_allowed(key, value):
                rule = (self.access_rules or {}).get(key, "c.PortRoutes.allowed_access")
                allowed = ", ".join(sorted(self.access[key]))
                raise Forbidden(f"Port {key}: the visibility {shown(value)} is not allowed here ({rule}); allowed: {allowed}.")

    def allowed_modes(self, access: ServerAccess) -> list[str] | None:
        """The token modes allowed with the ports' visibilities of ``access``, for the API
        and the page (None: any)."""
        allowed = [mode for mode in MODES if not self.mode_refusal(mode, access)]
        return None if self.modes is None and len(allowed) == len(MODES) else sorted(allowed)

    def as_json(self, key: str) -> list[str] | None:
        """The visibilities allowed on a port, for the API and the page (None: any)."""
        allowed = self.access.get(key)
        return None if allowed is None else sorted(allowed, key=lambda v: (-openness(v), v))


class Policy:
    """The policy of ``c.PortRoutes``: ``limits`` for a server, ``narrowed`` settings."""

    def __init__(self, settings, log):
        self.settings = settings
        self.log = log
        self._logged: set = set()
        #: whether any limit is set (none: every check is skipped)
        self.active = (
            settings.allowed_access is not None
            or settings.allowed_modes is not None
            or any(spec.allowed_access is not None for spec in settings.port_specs)
        )

    async def limits(self, user, servername: str, specs: list[PortSpec], startup_mode: str) -> Limits:
        """What ``user`` may set on their server ``servername``; ``startup_mode``: the
        server's ``default_startup_behavior`` (always allowed)."""
        settings = self.settings
        modes = None
        if settings.allowed_modes is not None:
            chosen = await self._ask(settings.allowed_modes, "allowed_modes", (user, servername), lambda v: v in MODES)
            modes = frozenset(chosen) | {"disabled", startup_mode}
        access, rules = {}, {}
        for spec in specs:
            if spec.allowed_access is not None:
                allowed, rules[spec.key] = spec.allowed_access, f"c.PortRoutes.ports, port {spec.key}: allowed_access"
            elif settings.allowed_access is not None:
                allowed = await self._ask(settings.allowed_access, "allowed_access", (user, spec), valid_allowed_access)
            else:
                access[spec.key] = None
                continue
            access[spec.key] = frozenset(allowed) | {"disabled", spec.access}
        defaults = {spec.key: spec.access for spec in specs}
        return Limits(modes, access, access_rules=rules, defaults=defaults, startup_mode=startup_mode)

    async def _ask(self, value, name: str, args: tuple, valid) -> list[str]:
        """A list as it is, or what a hook answers; a hook that fails or answers something
        else allows nothing beyond the admin's own settings (logged)."""
        if not callable(value):
            return list(value)
        try:
            answer = await maybe_future(value(*args))
            answer = answer if isinstance(answer, str) else list(answer)  # a generator is read once
            if isinstance(answer, str) or not all(isinstance(v, str) and valid(v) for v in answer):
                raise ValueError(
                    f"it must return a list of strings such as {list(MODES if name == 'allowed_modes' else PORT_ACCESS)}, not {answer!r}"
                )
            return list(answer)
        except Exception as e:
            if (name, args[0].name) not in self._logged:  # once per user, not at every reconciliation
                self._logged.add((name, args[0].name))
                self.log.error(
                    "jhproxy-routes: c.PortRoutes.%s failed for %s (allowing only the admin's settings): %s",
                    name,
                    shown(args[0].name),
                    shown(e),
                )
            return []

    async def narrowed(self, access: ServerAccess, limits: Limits, specs: list[PortSpec]) -> tuple[ServerAccess, dict]:
        """``access`` with each setting the policy forbids narrowed (see the module's
        docstring), and what changed: ``{"mode": [old, new], "ports": {key: [old, new]}}``."""
        changes: dict = {}
        action = mode_action(access.mode)
        if limits.mode_refusal(action, access):
            lower = [m for m in MODES[MODES.index(action) + 1 :] if not limits.mode_refusal(m, access)]
            new = lower[0] if lower else "disabled"
            if new == "random":
                narrowed, _ = await with_new_token(access)
            else:
                narrowed = access.disabled()
            changes["mode"] = [access.mode, narrowed.mode]  # as stored: disabled, allow_all, token
            access = narrowed
        ports = {}
        port_access = dict(access.port_access)
        for spec in specs:
            current = port_access.get(spec.key)
            if current is None or limits.access_allowed(spec.key, current):
                continue
            below = [v for v in PORT_ACCESS if openness(v) < openness(current) and limits.access_allowed(spec.key, v)]
            new = max(below, key=openness, default="disabled")
            ports[spec.key] = [current, new]
            if new == spec.access:
                del port_access[spec.key]  # the admin's own setting again
            else:
                port_access[spec.key] = new
        if ports:
            changes["ports"] = ports
            access = replace(access, port_access=port_access)
        return access, changes
