"""Configuration of jhproxy-routes: the ``c.PortRoutes`` section of ``jupyterhub_config.py``.

Every option lives here, with its help text; the other modules receive a ``PortRoutes``
instance and never read config themselves.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from traitlets import (
    Bool,
    Callable,
    CaselessStrEnum,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)
from traitlets.config import Configurable

from .contract import DEFAULTS, TOKEN_ENV, SidecarSettings
from .route_templates import RouteTemplate

GROUP_PREFIX = "group:"

#: What a port's ``access`` may say, by level from the most open to the least: a level admits
#: no one the level above it does not, the visibilities of one level admit different people
#: (``group:`` stands for every ``group:<name>``). The admin's policy narrows a setting it no
#: longer allows along these levels (``policy.py``). ``public``: no check; ``users``: any hub
#: user's login, or the token; ``shared``: the login of whoever the hub lets access the server
#: (its sharing, share codes, roles), or the token; ``group:<name>``: that group's members'
#: logins, or the token; ``server`` follows the server's token mode (``disabled`` /
#: ``allow_all`` / token); ``owner``: the owner's hub login only; ``disabled``: nobody.
ACCESS_LEVELS = (("public",), ("users",), ("shared", GROUP_PREFIX), ("server",), ("owner",), ("disabled",))
PORT_ACCESS = tuple(value for level in ACCESS_LEVELS for value in level if value != GROUP_PREFIX)


def takes_token(access: str) -> bool:
    """Whether a port of this visibility lets the port token in (``server``, ``users``,
    ``shared``, a group): in the token mode ``allow_all``, anyone."""
    return access not in ("public", "disabled", "owner")


def valid_port_access(value) -> bool:
    """One of PORT_ACCESS, or ``group:<name>`` with a non-empty name."""
    if not isinstance(value, str):
        return False
    return value in PORT_ACCESS or (value.startswith(GROUP_PREFIX) and bool(value[len(GROUP_PREFIX) :].strip()))


PORT_KEYS = {
    "port",
    "name",
    "access",
    "cors_origins",
    "strip_prefix",
    "activity",
    "scope_cookies",
    "allowed_access",
    "protocol",
}
#: how the route reaches the app: ``https`` for an app that serves TLS itself (its certificate
#: is not verified on that hop, see ``PortRoutes.ports``)
PORT_PROTOCOLS = ("http", "https")
PORT_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")


@dataclass(frozen=True)
class PortSpec:
    """One allowed port, or a range of ports, normalised from ``c.PortRoutes.ports``."""

    port: int  # the first of a range
    name: str = ""
    access: str = "server"
    cors_origins: tuple[str, ...] | None = None  # None: use PortRoutes.cors_origins
    strip_prefix: bool = False
    last: int | None = None  # the last port of a range; None for one port
    activity: bool | None = None  # None: use PortRoutes.activity
    scope_cookies: bool | None = None  # None: use PortRoutes.scope_cookies
    allowed_access: tuple[str, ...] | None = None  # None: use PortRoutes.allowed_access
    protocol: str = "http"  # one of PORT_PROTOCOLS: how the app is reached

    @property
    def is_range(self) -> bool:
        return self.last is not None

    @property
    def key(self) -> str:
        """``5000`` or ``8000-8099``: how users and the token API name it."""
        return f"{self.port}-{self.last}" if self.is_range else str(self.port)

    def covers(self, port: int) -> bool:
        return self.port <= port <= (self.last if self.is_range else self.port)


def parse_port(item, where="c.PortRoutes.ports") -> PortSpec:
    """Turn one entry of the allow-list (a port, a range such as ``"8000-8099"``, or a dict
    with either as ``port``) into a PortSpec."""
    if isinstance(item, bool):
        raise TraitError(f"{where}: {item!r} is not a port number")
    if isinstance(item, (int, str)):
        item = {"port": item}
    if not isinstance(item, dict):
        raise TraitError(f"{where}: {item!r} must be a port number, a range 'first-last', or a dict with 'port'")
    unknown = set(item) - PORT_KEYS
    if unknown:
        raise TraitError(f"{where}: unknown key(s) {sorted(unknown)} in {item!r}; allowed: {sorted(PORT_KEYS)}")
    port, last = item.get("port"), None
    if isinstance(port, str):
        match = PORT_RANGE.fullmatch(port.strip())
        if not match:
            raise TraitError(f"{where}: {port!r} is not a port number or a range such as '8000-8099'")
        port, last = int(match[1]), int(match[2])
        if not (1 <= port < last <= 65535):
            raise TraitError(f"{where}: range {item['port']!r} must go from a lower to a higher port within 1-65535")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise TraitError(f"{where}: port {port!r} is outside 1-65535")
    access = item.get("access", "server")
    if not valid_port_access(access):
        raise TraitError(f"{where}: port {port}: access {access!r} is not one of {PORT_ACCESS} or 'group:<name>'")
    origins = item.get("cors_origins")
    if origins is not None:
        if isinstance(origins, str) or not all(isinstance(o, str) for o in origins):
            raise TraitError(f"{where}: port {port}: cors_origins must be a list of strings")
        origins = tuple(origins)
    strip = item.get("strip_prefix", False)
    if not isinstance(strip, bool):
        raise TraitError(f"{where}: port {port}: strip_prefix must be true or false")
    activity = item.get("activity")
    if activity is not None and not isinstance(activity, bool):
        raise TraitError(f"{where}: port {port}: activity must be true or false")
    scope_cookies = item.get("scope_cookies")
    if scope_cookies is not None and not isinstance(scope_cookies, bool):
        raise TraitError(f"{where}: port {port}: scope_cookies must be true or false")
    allowed = item.get("allowed_access")
    if allowed is not None:
        allowed = tuple(check_allowed_access(allowed, f"{where}: port {port}: allowed_access"))
    protocol = item.get("protocol", "http")
    if protocol not in PORT_PROTOCOLS:
        raise TraitError(f"{where}: port {item['port']}: protocol {protocol!r} must be 'http' or 'https'")
    return PortSpec(
        allowed_access=allowed,
        port=port,
        name=str(item.get("name", "")),
        access=access,
        cors_origins=origins,
        strip_prefix=strip,
        last=last,
        activity=activity,
        scope_cookies=scope_cookies,
        protocol=protocol,
    )


def check_allowed_access(values, where: str) -> list[str]:
    """``values``, a list of visibilities a user may choose (``group:*``: any group), or
    TraitError naming ``where``."""
    if isinstance(values, str) or not isinstance(values, (list, tuple, set, frozenset)):
        raise TraitError(f"{where} must be a list such as ['owner', 'users'], not {values!r}")
    for value in values:
        if value != GROUP_PREFIX + "*" and not valid_port_access(value):
            raise TraitError(f"{where}: {value!r} is not one of {PORT_ACCESS}, 'group:<name>' or 'group:*'")
    return list(values)


def url_port(url: str) -> int | None:
    """The port of an http(s) URL, the scheme's default if none is written (None if it
    has no valid port)."""
    parts = urlsplit(url)
    try:
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None


def listening_ports(urls: dict[str, str]) -> dict[int, str]:
    """``{port: what}`` from ``{url: what}`` (URLs without a valid port left out)."""
    return {port: what for url, what in urls.items() if url and (port := url_port(url))}


def configured(app, cls, name):
    """The value of ``c.<Class>.<name>`` that traitlets gives ``cls`` (most derived section wins)."""
    value = None
    for klass in reversed(cls.mro()):
        if klass.__name__ in app.config and name in app.config[klass.__name__]:
            value = app.config[klass.__name__][name]
    return value


def check_no_overlap(spec: PortSpec, earlier: list[PortSpec]) -> PortSpec:
    """``spec``, unless one of its ports is in an earlier entry (TraitError)."""
    for other in earlier:
        if spec.port <= (other.last or other.port) and other.port <= (spec.last or spec.port):
            where = f" ({other.key} and {spec.key})" if spec.is_range or other.is_range else ""
            raise TraitError(f"c.PortRoutes.ports: port {max(spec.port, other.port)} is listed twice{where}")
    return spec


class PortRoutes(Configurable):
    """Which ports of a user's server are exposed through the hub's proxy, and how."""

    ports = List(
        config=True,
        help="""The allow-list: ports of a user's server that get a route in the proxy.

        Each entry is a port number, a range of ports, or a dict with more options::

            c.PortRoutes.ports = [
                5000,
                {"port": 5001, "name": "dashboard", "access": "public"},
                {"port": 8050, "strip_prefix": True, "cors_origins": ["https://example.org"]},
                "8100-8199",
            ]

        Keys of a dict entry:

        - ``port`` (required): 1-65535, or a range ``"first-last"``; no port twice. A
          range takes one proxy route per server, whatever its size: the sidecar reads the
          port from the URL, answers 404 naming the allowed ports for any other, and needs
          ``{port}`` as the template's last segment and servers with addresses of their own
          (DockerSpawner with ``use_internal_ip``, KubeSpawner, or a shared host).
        - ``name``: a label shown to users.
        - ``access``: who may call the port. ``server`` (default): the server's token mode
          decides (nobody / anyone / holders of the token); ``owner``: only the owner,
          logged into the hub, in a browser; ``users``: any logged-in hub user, or the
          token; ``group:<name>``: members of that hub group, or the token; ``shared``:
          whoever the hub lets access the server (JupyterHub's sharing and share codes,
          roles with ``access:servers`` on it), logged in, or the token; ``public``:
          anyone, no check; ``disabled``: nobody, not even the owner. Except for
          ``disabled``, the owner's browser always gets in through the hub login.
          Users may change it for their own servers on ``/hub/proxytoken/``.
        - ``cors_origins``: origins allowed to call the port from a browser; default
          ``PortRoutes.cors_origins``.
        - ``strip_prefix``: forward ``/rest`` instead of ``<route>/rest`` to the app
          (the prefix is sent as ``X-Forwarded-Prefix``). Stripping needs the sidecar,
          so such a port never gets a direct route.
        - ``activity``: whether requests on this port count as the server's activity
          (for ``jupyterhub-idle-culler``); default ``PortRoutes.activity``. Set False for
          a port that a health check or a monitoring scraper calls.
        - ``scope_cookies``: keep the app's cookies on its port (path routes); default
          ``PortRoutes.scope_cookies``. Set False for an app whose cookies must reach
          other paths of the hub's host.
        - ``allowed_access``: the visibilities users may choose for this port, a list as
          for ``PortRoutes.allowed_access`` (which it replaces for this port).
        - ``protocol``: ``http`` (default), or ``https`` for an app that serves TLS itself
          (``jupyter lab --certfile``, ``streamlit --server.sslCertFile``, ``uvicorn
          --ssl-keyfile``). The route then reaches the app over TLS (websockets as
          ``wss``), and the app's certificate is not verified: it is usually self-signed,
          the hop runs inside the hub's network, and visitors are protected by the proxy's
          own TLS. Such a port, or range, always goes through the sidecar, public or not
          (the proxy would verify the certificate).

          .. versionadded:: 0.2

        A wrong entry stops the hub at start-up with a message naming it.
        """,
    )

    route_template = Unicode(
        "/ports/{username}/{servername}/{port}/",
        config=True,
        help="""Path of a port's route, below the hub's ``base_url``; or, with
        ``c.JupyterHub.subdomain_host``, a host of its own (its own origin; the whole host is
        the app's): below the hub's domain, ``{port}--{username}.{subdomain_host}``, or below a
        port domain apart from the hub's, ``{port}--{username}.ports.example-content.org``.

        Fields: ``{username}``, ``{servername}``, ``{port}``; ``{port}`` and ``{username}``
        are required. For the default server ``{servername}`` is empty and its segment
        disappears (``/ports/alice/5000/``), as in JupyterHub's ``/user/alice/`` against
        ``/user/alice/dev/``. Without ``{servername}``, named servers get no port routes.
        In a host, names become DNS labels as JupyterHub makes them; ``{port}--`` begins a
        label, ``{username}`` is a whole label or ends the port's, ``{servername}`` is a
        whole label.

        A port's page on a host below the hub's domain can set cookies for the whole
        domain. Behind HTTPS the hub's login cookie is then made a ``__Host-`` cookie
        (JupyterHub's ``cookie_host_prefix_enabled``, turned on when the hub starts; the
        hub refuses to start if it is set False), which no other host can plant; but a
        page can still set so many cookies for the domain that the proxy refuses its
        visitors' requests to the hub and to every port (431, a cookie bomb) until they
        clear them. Ports below a domain of their own (not the hub's, not a parent of it,
        with no registrable domain in common) cannot reach the hub's cookies at all: for
        hubs with ``public`` ports visited in browsers. Both need HTTPS; see Security.

        The default lies outside ``/hub/`` and ``/user/``: those paths receive the hub's
        login cookie and the user server's cookies, so a route there always goes through
        the sidecar, which strips them, and can never be a direct route. The seed's form
        ``/hub/proxy{port}/{username}/`` works, at that cost.
        """,
    )

    default_startup_behavior = CaselessStrEnum(
        ["disabled", "allow_all", "random"],
        "disabled",
        config=True,
        help="""Token mode a server gets the first time it starts (as in jhproxy).

        ``disabled``: nobody may call its ports until the user opens them; ``allow_all``:
        anyone may; ``random``: a new random token is required. Applied only when the server
        has no stored mode yet: a mode the user chose is kept across restarts.
        """,
    )

    token_max_age = Integer(
        0,
        config=True,
        help="""Longest lifetime of a port token, in seconds; 0 (the default): no limit.

        A user may give a new token a lifetime (``{"mode": "random", "expires_in": 86400}``
        in the token API, a choice on ``/hub/proxytoken/``, ``--expires-in`` in the CLI);
        a longer one is refused (400 naming this limit). A token made without one (the
        jhproxy protocol's ``random``, ``default_startup_behavior = "random"``) expires
        this long after it was made. Lowering it applies to tokens already made, counted
        from when they were made (tokens stored before this option existed count from the
        first start of a hub that has it). The sidecar refuses an expired token as it
        refuses a wrong one, at once; the owner makes a new one on the page.

        .. versionadded:: 0.2
        """,
    )

    allowed_access = Union(
        [List(Unicode()), Callable()],
        default_value=None,
        allow_none=True,
        config=True,
        help="""The visibilities users may choose for their ports; None (the default): all.

        A list of visibilities (see ``ports``; ``group:<name>`` for one group,
        ``group:*`` for any), or a hook that returns one, called for each user and port
        (``allowed_access(user, port)``, sync or async, as JupyterHub's hooks are: ``user``
        is JupyterHub's User, with ``user.name`` and ``user.groups``; ``port`` the port's
        entry, with ``port.port``, ``port.key`` (``"5000"`` or ``"8000-8099"``), ``port.name``
        and ``port.access``)::

            c.PortRoutes.allowed_access = ["owner", "server", "users"]  # never public

            def allowed_access(user, port):
                if any(g.name == "teachers" for g in user.groups):
                    return ["owner", "server", "users", "public"]
                return ["owner", "server"]
            c.PortRoutes.allowed_access = allowed_access

        A port's own ``allowed_access`` in ``ports`` takes precedence. The port's
        ``access`` in ``ports`` (the admin's) and ``disabled`` are always allowed. A
        forbidden choice is not offered on the page, and the token API and the CLI refuse
        it (403 naming this option). A setting made before the policy was tightened is
        narrowed at the next reconciliation (or when its server starts), logged and
        audited: to the most open visibility still allowed that is no more open than it
        (``public`` > ``users`` > ``shared`` and ``group:<name>`` > ``server`` >
        ``owner`` > ``disabled``; a group is never picked). A hook that fails or returns something
        else allows only the admin's settings, and is logged. It is called for every
        running server's ports at every reconciliation: keep it quick (no network calls).

        A port with visibility ``server`` (or ``users``, ``shared``, a group) lets anyone
        in while the server's token mode is ``allow_all``: that mode is therefore refused
        (and narrowed to ``random``) while such a port may not be ``public``, unless it is
        the server's ``default_startup_behavior``.

        .. versionadded:: 0.2
        """,
    )

    allowed_modes = Union(
        [List(Unicode()), Callable()],
        default_value=None,
        allow_none=True,
        config=True,
        help="""The token modes users may choose: some of ``allow_all``, ``random`` and
        ``disabled``; None (the default): all.

        A list, or a hook that returns one, called for each user and server
        (``allowed_modes(user, servername)``, sync or async; ``servername`` is ``""`` for
        the default server). ``disabled`` and the server's ``default_startup_behavior`` are
        always allowed. A forbidden mode is not offered on the page, and the token API and
        the CLI refuse it (403 naming this option). A server whose mode is no longer allowed
        is narrowed at the next reconciliation, logged and audited: ``allow_all`` becomes
        ``random`` (a new token, which the owner reads on the page) if that is allowed, else
        ``disabled``; ``random`` becomes ``disabled``.

        .. versionadded:: 0.2
        """,
    )

    shutdown_behavior = CaselessStrEnum(
        ["pass", "disable"],
        "pass",
        config=True,
        help="""What happens to the token mode when a server stops (as in jhproxy).

        ``pass``: keep it for the next start; ``disable``: set it to ``disabled``.
        """,
    )

    cors_origins = List(
        Unicode(),
        ["*"],
        config=True,
        help="""Origins allowed to call a protected port from a browser (CORS).

        ``["*"]`` (the default, as in jhproxy): any origin, without credentials. A list of
        origins (``https://example.org``) is echoed back for those origins only. Preflight
        requests (``OPTIONS``) are answered by the sidecar and need no token. Public ports on
        a direct route are forwarded untouched: the app sets its own CORS headers.
        """,
    )

    activity = Bool(
        True,
        config=True,
        help="""Requests let through to a server's ports count as that server's activity, as
        requests to ``/user/<name>/`` do: the server's and its user's ``last_activity`` in the
        hub follow them, so ``jupyterhub-idle-culler`` keeps a server whose apps are in use.

        The hub collects it every ``c.JupyterHub.last_activity_interval``: from the proxy for
        public ports on a direct route, from the sidecar for every other port (only requests
        it let through; refused ones never count). A websocket counts with every message.
        Per port: ``{"port": 9100, "activity": False}`` (a health check or a scraper).
        """,
    )

    freeze_gc_at_startup = Bool(
        True,
        config=True,
        help="""Move every object the hub has made by the time it first checks its routes (its
        users, servers, database rows, configuration) out of the garbage collector's reach, with
        ``gc.freeze()``. Python's full collections then walk only what came later: on a hub
        with 10,000 servers they stopped blocking the event loop for ~170 ms during each
        reconciliation and took ~2-9 ms (``benchmarks/scale.py``). Objects frozen are still
        freed by reference counting when no longer used; only reference cycles among them are
        kept. Set False to leave the collector as JupyterHub has it.
        """,
    )

    scope_cookies = Bool(
        True,
        config=True,
        help="""Keep the cookies an app sets on its own port, on path routes.

        Path routes (``/ports/...``) share the hub's origin: a cookie an app sets with
        ``Path=/`` (``_streamlit_xsrf``, a session of its own) is sent by the browser to
        every other port of every user on the hub, whose apps can read it, and one port's
        app can plant cookies for another's. The sidecar therefore rewrites the ``Path``
        of each ``Set-Cookie`` of the app to the port's route (a path already below the
        route is kept; with ``strip_prefix`` the app's path is put below the route) and
        drops its ``Domain``, as nginx's ``proxy_cookie_path`` and
        ``proxy_cookie_domain`` do. Routes with a host of their own
        (``subdomain_host``) need no rewrite: their cookies are already their host's.

        A direct proxy route cannot rewrite: a public port on a path route goes through
        the sidecar while this is on. Per port: ``{"port": 8501, "scope_cookies": False}``.
        """,
    )

    direct_public_routes = Bool(
        True,
        config=True,
        help="""Send public ports straight from the proxy to the app, without the sidecar.

        Fastest, but the sidecar then cannot strip cookies: the only JupyterHub cookie a
        browser sends outside ``/hub/`` and ``/user/`` is ``jupyterhub-session-id`` (path
        ``/``, not a credential). Set False to send every port through the sidecar.

        No effect on Traefik (``traefik_file``): it keeps no activity per route, so every
        port goes through the sidecar, which records it.
        """,
    )

    allow_shared_host = Bool(
        False,
        config=True,
        help="""Route ports of servers on the hub's own machine that run as the hub's own
        system user (SimpleLocalProcessSpawner), as root, or as a user that is not known.

        On the hub's machine all servers share one network: port 5000 belongs to whichever
        process bound it first. A server that runs as a system user of its own
        (LocalProcessSpawner, SystemdSpawner as The Littlest JupyterHub uses it; see
        ``server_uid``) needs no permission: its routes reach only listeners of that user
        (the sidecar checks the owner of every connection it opens to the app), so another
        user's app on the port is never reached, and every port, public ones too, goes
        through the sidecar. Where servers run as one system user, the owner tells no one
        apart: every user's route to 5000 would reach the one app there, under each route
        owner's settings. Off by default: such servers get no port routes, and the hub logs
        why. Turn on for a single-user hub, a demo, or users who trust each other. Servers
        with addresses of their own (DockerSpawner, KubeSpawner) are not affected.
        """,
    )

    loopback_relay = Bool(
        True,
        config=True,
        help="""Let the in-server part (``jhproxy_routes.singleuser``, where the package is
        installed in the users' environment) make an allowed port whose app listens only on
        127.0.0.1 or ::1 reachable through its route anyway.

        Flask, Dash, uvicorn, Gradio and TensorBoard listen on 127.0.0.1 unless told
        otherwise; in a container or pod the proxy reaches the server's own address, where
        nothing listens. With this on, the in-server part listens on the server's own
        addresses at that port and relays each connection to the loopback listener, only
        for allowed ports, never for the Jupyter server's own port or a kernel's, and only
        for servers with a network of their own (DockerSpawner, KubeSpawner): on the hub's
        machine the routes reach 127.0.0.1 already, and a relay would open the app to the
        machine's network. Set False to require apps to listen on all interfaces
        (``--host 0.0.0.0``).

        .. versionadded:: 0.2
        """,
    )

    server_uid = Callable(
        None,
        allow_none=True,
        config=True,
        help="""A hook that returns the uid of the system user a server on the hub's machine
        runs as, for spawners that do not show it: ``server_uid(spawner)``, sync or async,
        an ``int``, or None if not known. The routes of that server reach only listeners
        of this uid (see ``allow_shared_host``).

        Without it: the uid of the server's process (``spawner.pid``: LocalProcessSpawner
        and its subclasses, sudospawner), else SystemdSpawner's ``username_template``
        user (TLJH: ``jupyter-<name>``). Needed for other spawners that run servers on
        the hub's machine under users of their own, and for SystemdSpawner with
        ``dynamic_users``. For a spawner that runs each server as ``jupyter-<name>``::

            import pwd
            c.PortRoutes.server_uid = lambda spawner: pwd.getpwnam("jupyter-" + spawner.user.name).pw_uid

        The hub's own uid and root (0) tell no one apart: servers running as them need
        ``allow_shared_host``. Called for every running local server at every
        reconciliation: keep it quick.

        .. versionadded:: 0.2
        """,
    )

    reconcile_interval = Integer(
        30,
        config=True,
        help="""Seconds between two comparisons of the wanted routes with the proxy's and the
        sidecar's tables; missing routes are added, stale ones removed. Also runs at hub
        start-up and when the hub restarts its proxy. 0 turns the periodic run off.
        """,
    )

    api_timeout = Float(
        10,
        config=True,
        help="""Seconds one request to the proxy's or the sidecar's route API may take.

        On Traefik's file provider the routes are in the hub's process: this is the
        sidecar's only. On its etcd and redis providers, also each call to the store. On
        both, ``c.TraefikProxy.check_route_timeout`` bounds the wait for Traefik to load a
        change.
        """,
    )

    api_retry_timeout = Float(
        30,
        config=True,
        help="""Seconds to keep retrying (with exponential backoff) a route change that failed
        because the proxy or sidecar was unreachable. After that the change is logged as failed
        and left to the next reconciliation; a spawn is never blocked longer than this (on
        Traefik, for the sidecar; Traefik's own waits: ``c.TraefikProxy.check_route_timeout``).
        """,
    )

    concurrency = Integer(
        10,
        config=True,
        help="""Route API requests allowed in flight at once (per proxy and per sidecar; on
        Traefik, ``c.TraefikProxy.concurrency`` bounds the proxy's own).""",
    )

    db_url = Unicode(
        "sqlite:///jhproxy_routes.sqlite",
        config=True,
        help="""SQLAlchemy URL of the database that keeps each server's token mode, token hash,
        encrypted token and per-port access. Kept apart from the hub's own database.
        """,
    )

    sidecar_url = Unicode(
        "http://127.0.0.1:8765",
        config=True,
        help="""Where the auth sidecar listens. The proxy sends protected routes here, the hub
        pushes the sidecar's route table here (under ``/_jhproxy-routes/api/``).
        """,
    )

    sidecar_api_urls = List(
        Unicode(),
        config=True,
        help="""Where the hub sends route changes: every replica of the sidecar. Default:
        ``[sidecar_url]``. With several replicas behind a load balancer (``sidecar_url``, a
        Kubernetes Service), list each one here, or one name that resolves to all of them
        (a headless Service) with ``sidecar_api_resolve_all``. A replica reports itself ready
        at ``/_jhproxy-routes/ready`` once it has received the whole table (at the end of a
        reconciliation; ``reconcile_interval`` must be above 0), for ``sidecar_ready_for``.
        """,
    )

    sidecar_api_resolve_all = Bool(
        False,
        config=True,
        help="""Each host name in ``sidecar_api_urls`` stands for every address it resolves to,
        looked up again every few seconds (a Kubernetes headless Service with
        ``publishNotReadyAddresses: true``, so that new replicas receive their table before
        they are ready).
        """,
    )

    sidecar_ready_for = Float(
        0,
        config=True,
        help="""Seconds a sidecar replica keeps reporting ready (``/_jhproxy-routes/ready``)
        after a reconciliation last gave it the whole table. 0: for ever, so the replicas
        keep serving while the hub is down, but one the hub can no longer reach keeps its
        last settings. A few reconciliation periods (say 300 s) take such a replica out of its
        Service, at the cost of taking all of them out when the hub is down longer than that.
        Until then, a change for one server fails unless every replica that may still be
        serving took it.
        """,
    )

    sidecar_managed = Bool(
        True,
        config=True,
        help="""Start the sidecar as a JupyterHub managed service. Set False when it runs
        elsewhere (another container or pod, maybe several replicas): the hub then registers
        it as an external service at ``sidecar_url`` whose API token is ``sidecar_api_token``,
        which must be set, and given to the sidecar, see ``examples/kubernetes/``.
        """,
    )

    sidecar_api_token = Unicode(
        config=True,
        help="""Secret the hub uses to update the sidecar's route table. Default: the
        environment variable ``JHPROXY_ROUTES_SIDECAR_TOKEN``, else a new random value per hub
        start (fine for a managed sidecar, which is restarted with the hub).
        """,
    )

    upstream_timeout = Float(
        DEFAULTS.upstream_timeout,
        config=True,
        help="""Seconds the sidecar waits for an app to start answering a request before it
        returns 504.
        """,
    )

    client_timeout = Float(
        DEFAULTS.client_timeout,
        config=True,
        help="""Seconds the sidecar gives a client to finish a request head once begun: a
        head still incomplete one to two of these periods later (slowloris) gets 408 and the
        connection closes. Idle keep-alive connections are closed after ``client_idle_timeout``.
        """,
    )

    client_idle_timeout = Float(
        DEFAULTS.client_idle_timeout,
        config=True,
        help="""Seconds a keep-alive connection to the sidecar may wait for its next request
        before the sidecar closes it (checked every ``client_timeout``). CHP keeps connections
        to the sidecar open between requests and does not retry a request on one that the
        sidecar has just closed, so keep this at minutes: CHP reuses its most recently used
        connections first, and one idle this long is rarely picked at that moment. 0: never.
        """,
    )

    max_idle_connections = Integer(
        DEFAULTS.max_idle_connections,
        config=True,
        help="""Idle connections to the sidecar (waiting for their next request: CHP's pool,
        or clients that reach the sidecar directly) kept at once. A new connection beyond this
        closes the one that has waited longest, one that never sent a request first (CHP's
        always have). Busy connections (requests, websockets) are never closed or refused for
        it: a user's websockets to their own port cannot push other users' traffic out.
        """,
    )

    login_cache_max_age = Integer(
        DEFAULTS.login_cache_max_age,
        config=True,
        help="""Seconds the sidecar trusts what the hub said about a browser's login before
        asking again. A hub logout ends the user's sessions on ports within this time;
        a smaller value asks the hub more often.
        """,
    )

    audit_log = Unicode(
        "jhproxy-routes-audit.jsonl",
        config=True,
        help="""File (JSON lines, appended) where the hub records changes of tokens and port
        access (who, which server, when, from where) and the sidecar records denied requests.
        Relative to the hub's working directory; empty: no audit log. Tokens are never written.
        """,
    )

    bad_token_limit = Integer(
        DEFAULTS.bad_token_limit,
        config=True,
        help="""Wrong tokens one client may send to one port within ``bad_token_window``
        seconds; after that its wrong tokens on that port get 429 (Too Many Requests) until
        the window has passed (the right token always gets in). The client is the address CHP
        saw, or the one ``trusted_proxies`` say. 0: no limit.
        """,
    )

    bad_token_window = Float(
        DEFAULTS.bad_token_window,
        config=True,
        help="""Seconds over which ``bad_token_limit`` counts wrong tokens.""",
    )

    trusted_proxies = List(
        Unicode(),
        config=True,
        help="""Addresses or networks (CIDR, e.g. ``10.0.0.0/8``) of proxies in front of CHP (a
        load balancer, an ingress) whose ``X-Forwarded-For`` entries the sidecar believes.
        The client (for ``bad_token_limit`` and the audit log) is then the rightmost entry
        that is not one of these; CHP's own entry, the address it saw, always counts. Empty
        (the default): the client is the address CHP saw. Set it when many clients reach CHP
        through one address, else they share one count of wrong tokens.
        """,
    )

    token_cookies = Bool(
        DEFAULTS.token_cookies,
        config=True,
        help="""Trade a port token that a browser brings in the address (``?proxy_token=``,
        a link someone was given) for a cookie of that port: the browser is sent on to the
        same address without the token, and the app's own requests after the first page
        (scripts, websockets) get in by the cookie. The cookie is bound to the port and the
        token: a new or disabled token, or its expiry, ends it.

        On path routes every port shares the hub's origin, so a page of any other port that
        the same browser opens later can use that cookie as the port's own pages do (as it
        can use a hub login on ports): a token holder who then visits an untrusted port
        lends it their access. Use ``subdomain_host`` (each port an origin of its own) where
        that matters, or set False: a browser then gets the first page only, and scripts
        send the token with each request. Scripts are never given the cookie.

        .. versionadded:: 0.2
        """,
    )

    metrics_by_route = Bool(
        DEFAULTS.metrics_by_route,
        config=True,
        help="""Label the sidecar's request and byte metrics with each route (a few series per
        running server's port). Set False on hubs with many thousands of servers: all routes
        then share one series. The sidecar serves its metrics at ``/_jhproxy-routes/metrics``
        and ``/services/jhproxy-routes/metrics``, to a token with the scope ``read:metrics``
        (unless ``c.JupyterHub.authenticate_prometheus`` is False); the route manager's are
        in the hub's own ``/hub/metrics``.
        """,
    )

    @property
    def audit_log_path(self) -> str:
        """``audit_log`` as an absolute path ("" when off): the sidecar runs elsewhere."""
        return os.path.abspath(self.audit_log) if self.audit_log else ""

    @property
    def has_explicit_sidecar_token(self) -> bool:
        """Whether the sidecar's secret was set (config or environment), not made up here."""
        return "sidecar_api_token" in self.config.get("PortRoutes", {}) or bool(os.environ.get(TOKEN_ENV))

    def sidecar_settings(self, authenticate_metrics: bool) -> SidecarSettings:
        """What a managed sidecar is told (its metrics protected as the hub's are)."""
        return SidecarSettings(
            upstream_timeout=self.upstream_timeout,
            client_timeout=self.client_timeout,
            client_idle_timeout=self.client_idle_timeout,
            max_idle_connections=self.max_idle_connections,
            login_cache_max_age=self.login_cache_max_age,
            bad_token_limit=self.bad_token_limit,
            bad_token_window=self.bad_token_window,
            audit_log=self.audit_log_path,
            authenticate_metrics=authenticate_metrics,
            metrics_by_route=self.metrics_by_route,
            trusted_proxies=tuple(self.trusted_proxies),
            token_cookies=self.token_cookies,
        )

    @default("sidecar_api_token")
    def _default_sidecar_api_token(self):
        return os.environ.get(TOKEN_ENV) or secrets.token_hex(32)

    @validate("ports")
    def _validate_ports(self, proposal):
        specs = []
        for item in proposal.value:
            specs.append(check_no_overlap(parse_port(item), specs))
        return proposal.value

    @validate("allowed_access", "allowed_modes")
    def _validate_allowed(self, proposal):
        value, name = proposal.value, proposal.trait.name
        if value is None or callable(value):
            return value
        if name == "allowed_access":
            return check_allowed_access(value, "c.PortRoutes.allowed_access")
        for mode in value:
            if mode not in ("allow_all", "random", "disabled"):
                raise TraitError(f"c.PortRoutes.allowed_modes: {mode!r} is not one of allow_all, random, disabled")
        return value

    @validate("trusted_proxies")
    def _validate_trusted_proxies(self, proposal):
        for item in proposal.value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise TraitError(f"c.PortRoutes.trusted_proxies: {item!r} is not an address or a network (CIDR)") from None
        return proposal.value

    @validate("route_template")
    def _validate_route_template(self, proposal):
        RouteTemplate(proposal.value)  # raises TraitError naming the problem
        return proposal.value

    @validate("sidecar_url", "sidecar_api_urls")
    def _validate_sidecar_urls(self, proposal):
        for url in [proposal.value] if isinstance(proposal.value, str) else proposal.value:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname or url_port(url) is None or parts.path.strip("/"):
                raise TraitError(
                    f"c.PortRoutes.{proposal.trait.name}: {url!r} must be http://host[:port] (the sidecar speaks plain HTTP)"
                )
        return proposal.value

    @validate(
        "reconcile_interval",
        "concurrency",
        "login_cache_max_age",
        "bad_token_limit",
        "bad_token_window",
        "client_timeout",
        "sidecar_ready_for",
        "client_idle_timeout",
        "max_idle_connections",
        "token_max_age",
    )
    def _validate_non_negative(self, proposal):
        positive = proposal.trait.name in ("concurrency", "client_timeout", "max_idle_connections")
        if proposal.value < 0 or (positive and proposal.value <= 0):
            raise TraitError(f"c.PortRoutes.{proposal.trait.name}: {proposal.value} is too small")
        return proposal.value

    def scopes_cookies(self, spec: PortSpec) -> bool:
        """Whether the sidecar keeps the app's cookies on the port (or range)."""
        return self.scope_cookies if spec.scope_cookies is None else spec.scope_cookies

    def counts_activity(self, spec: PortSpec) -> bool:
        """Whether requests on the port (or range) count as its server's activity."""
        return self.activity if spec.activity is None else spec.activity

    @property
    def port_specs(self) -> list[PortSpec]:
        return [parse_port(item) for item in self.ports]

    def check_together(self) -> None:
        """Raise TraitError for options that are fine alone and wrong together."""
        if any(spec.is_range for spec in self.port_specs):
            problem = self.template.ranges_problem()
            if problem:
                raise TraitError(f"c.PortRoutes.ports has a port range, which needs {problem}")

    @property
    def template(self) -> RouteTemplate:
        return RouteTemplate(self.route_template)
