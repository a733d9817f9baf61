"""``jhproxy-routes check``: read a ``jupyterhub_config.py`` as the hub would, and report
what would break or surprise at run time, without starting anything."""

from __future__ import annotations

import asyncio
import copy
import difflib
import itertools
import logging
import os
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

from traitlets import TraitError
from traitlets.config.loader import PyFileConfigLoader
from traitlets.utils.importstring import import_item

from .config import PortRoutes, check_no_overlap, configured, listening_ports, parse_port
from .hub_cookies import plain_http_warning, prefix_refused
from .wiring import add_scopes, user_role_scopes, user_scopes_problem


@dataclass(frozen=True)
class Problem:
    level: str  # error | warning | note (what a setting means, no problem)
    message: str


def check_config_file(path: str) -> list[Problem]:
    """Everything wrong with the config file at ``path`` (empty: nothing found)."""
    try:
        loader = PyFileConfigLoader(os.path.basename(path), path=os.path.dirname(os.path.abspath(path)))
        config = loader.load_config()
    except Exception as e:  # the hub would not start either: say why, in one line
        return [Problem("error", f"the file does not load: {type(e).__name__}: {e}")]
    return check_config(config)


def check_config(config) -> list[Problem]:
    from jupyterhub.app import JupyterHub

    from . import proxy_class_for

    problems = [*_unknown_options(config)]
    try:
        with warnings.catch_warnings():  # traitlets' own warnings: we report them ourselves
            warnings.simplefilter("ignore")
            hub = JupyterHub(config=config)
            spawner_class = hub.spawner_class
    except (TraitError, ValueError, ImportError) as e:
        return [*problems, Problem("error", f"c.JupyterHub: {e}")]
    proxy_class = config.JupyterHub.get("proxy_class")
    try:
        ours = proxy_class_for(proxy_class)
    except ValueError as e:  # a proxy we cannot work with (Traefik's consul provider, or one of another kind)
        problems.append(Problem("error", str(e)))
        ours = None
    if ours is not None and ours is not proxy_class:
        shown = "not set" if proxy_class is None else f"{proxy_class!r}"
        problems.append(
            Problem("error", f"c.JupyterHub.proxy_class is {shown}: call jhproxy_routes.install(c) at the end of the file")
        )
    settings = _port_routes(config, problems)
    if settings is None:
        return problems
    try:
        settings.check_together()
    except TraitError as e:
        problems.append(Problem("error", str(e)))
    specs = settings.port_specs
    if not specs:
        problems.append(Problem("warning", "c.PortRoutes.ports is empty: no port gets a route"))
    problems += _spawner_problems(hub, spawner_class, settings, specs, ours)
    problems += _sidecar_problems(settings)
    problems += _cors_problems(settings)
    problems += _host_problems(hub, config, settings.template)
    problems += _role_problems(hub)
    return problems


KNOWN_OPTIONS = frozenset(PortRoutes.class_trait_names(config=True))


def _unknown_options(config):
    for name in config.get("PortRoutes", {}):
        if name not in KNOWN_OPTIONS:
            close = difflib.get_close_matches(name, KNOWN_OPTIONS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            yield Problem("error", f"c.PortRoutes.{name} is not an option{hint}: it would be ignored")


def _port_routes(config, problems) -> PortRoutes | None:
    """The settings; each invalid option (and port entry) is reported, and the rest
    checked without it."""
    valid = copy.deepcopy(config)  # the caller's config stays as it was
    for name, value in list(config.get("PortRoutes", {}).items()):
        if name not in KNOWN_OPTIONS:
            del valid.PortRoutes[name]
            continue
        if name == "ports" and isinstance(value, list):
            value = valid.PortRoutes.ports = _valid_ports(value, problems)
        try:
            PortRoutes(**{name: value})
        except TraitError as e:
            problems.append(Problem("error", str(e) if str(e).startswith("c.PortRoutes") else f"c.PortRoutes.{name}: {e}"))
            del valid.PortRoutes[name]
    try:
        return PortRoutes(config=valid)
    except TraitError as e:  # options that are only wrong together
        problems.append(Problem("error", str(e)))
        return None


def _valid_ports(items: list, problems) -> list:
    """The entries of ``c.PortRoutes.ports`` that are valid; the others reported."""
    valid, specs = [], []
    for item in items:
        try:
            specs.append(check_no_overlap(parse_port(item), specs))
        except TraitError as e:
            problems.append(Problem("error", str(e)))
            continue
        valid.append(item)
    return valid


def _spawner_problems(hub, spawner_class, settings: PortRoutes, specs, proxy_class):
    from jupyterhub.spawner import SimpleLocalProcessSpawner

    name = spawner_class.__name__
    try:  # the port the spawner gives the Jupyter server, its own default or the config's
        server_port = spawner_class(config=hub.config).port
    except Exception as e:
        yield Problem("warning", f"{name} cannot be made without a user ({e}): its server port is not checked")
        server_port = None
    for spec in specs:
        if server_port is not None and spec.covers(server_port):
            within = f" (in {spec.key})" if spec.is_range else ""
            yield Problem(
                "error",
                f"port {server_port}{within} is where {name} runs the Jupyter server itself: it never gets a route (it would open the whole server to the port's token)",
            )
    if not runs_on_hub_machine(spawner_class):
        return
    shared_user = issubclass(spawner_class, SimpleLocalProcessSpawner)
    unknown_user = configured(hub, spawner_class, "dynamic_users") is True
    if (shared_user or unknown_user) and not settings.allow_shared_host and settings.server_uid is None:
        why = "as the hub's own system user" if shared_user else "under dynamic users, whose uids it does not know"
        yield Problem(
            "warning",
            f"{name} runs every server {why} on the hub's machine, where users share ports: they get no port routes"
            " unless c.PortRoutes.server_uid says each server's uid, or c.PortRoutes.allow_shared_host = True",
        )
    hub_ports = listening_ports(
        {
            hub.bind_url: "the proxy's public port",
            hub.hub_bind_url or f"http://127.0.0.1:{hub.hub_port}": "the hub's own port",
            **_proxy_api(hub, proxy_class),
            settings.sidecar_url: "the sidecar's",
        }
    )
    for port, what in hub_ports.items():
        if any(spec.covers(port) for spec in specs):
            yield Problem("warning", f"port {port} is {what} on this machine: it never gets a route")


def runs_on_hub_machine(spawner_class) -> bool:
    """LocalProcessSpawner and its kind, SystemdSpawner (known by its traits: it is not a
    dependency)."""
    from jupyterhub.spawner import LocalProcessSpawner

    traits = spawner_class.class_trait_names()
    return issubclass(spawner_class, LocalProcessSpawner) or {"unit_name_template", "username_template"} <= set(traits)


def _proxy_api(hub, proxy_class) -> dict[str, str]:
    """``{url: what}`` of the proxy's API as the config sets it (none for an unknown proxy)."""
    if proxy_class is None:
        return {}
    cls = import_item(proxy_class) if isinstance(proxy_class, str) else proxy_class
    traits = cls.class_traits()
    if "traefik_api_url" in traits:  # Traefik's API (its default: localhost:8099), and the store of a key-value provider
        urls = {configured(hub, cls, "traefik_api_url") or cls.traefik_api_url.default_value: "Traefik's API"}
        for store in ("etcd", "redis"):
            if f"{store}_url" in traits:
                urls[configured(hub, cls, f"{store}_url") or traits[f"{store}_url"].default_value] = (
                    f"the {store} store of the routes"
                )
        return urls
    return {configured(hub, cls, "api_url") or "http://127.0.0.1:8001": "the proxy's API"}


def _sidecar_problems(settings: PortRoutes):
    if (settings.sidecar_api_resolve_all or len(settings.sidecar_api_urls) > 1) and not settings.reconcile_interval:
        yield Problem(
            "error",
            "sidecar replicas need periodic reconciliations (c.PortRoutes.reconcile_interval > 0): only they make a new replica ready",
        )
    if not settings.sidecar_managed and not settings.has_explicit_sidecar_token:
        yield Problem(
            "error",
            "c.PortRoutes.sidecar_managed is False but no sidecar_api_token (or $JHPROXY_ROUTES_SIDECAR_TOKEN) is set: the hub would make a new one the sidecar cannot know",
        )


def _host_problems(hub, config, template):
    """What a host template asks of the hub (``subdomain_host``, its cookies, HTTPS), and
    where its ports are."""
    problem = template.hub_problem(hub.subdomain_host, hub.subdomain_hook)
    if problem:
        yield Problem("error", problem)
        return
    refused = prefix_refused(template, hub.subdomain_host, config.JupyterHub.get("cookie_host_prefix_enabled"))
    if refused:
        yield Problem("error", refused)
    if warning := plain_http_warning(template, hub.subdomain_host):
        yield Problem("warning", warning)
    if template.port_domain:
        yield from _port_domain_notes(template.port_domain, urlsplit(hub.subdomain_host).hostname)
    elif template.by_host:
        yield Problem(
            "note",
            f"ports are on hosts below the hub's domain ({urlsplit(hub.subdomain_host).hostname}): a port's page (a public"
            " port's, anyone's) can set so many cookies for the domain that the proxy answers 431 to its visitors'"
            " requests to the hub until they clear them (a cookie bomb); a port domain apart from the hub's"
            " ('{port}--{username}.ports.example-content.org') keeps the hub out of reach",
        )


def _port_domain_notes(ours: str, hub_domain: str):
    """Where ports are and what that needs; a warning when the port domain and the hub's may
    be one site: a common parent of two labels or more is, unless it is a public suffix, a
    domain a port's page can set cookies for, which the hub receives."""
    pairs = zip(reversed(ours.split(".")), reversed(hub_domain.split(".")), strict=False)
    common = ".".join(reversed([a for a, b in itertools.takewhile(lambda pair: pair[0] == pair[1], pairs)]))
    if common.count(".") >= 1:
        yield Problem(
            "warning",
            f"the port domain {ours} and the hub's {hub_domain} both end in {common}: unless that is a public suffix"
            f" (publicsuffix.org), a port's page can set cookies for {common}, which the hub receives (its owner's hub"
            " login, a cookie bomb): use a domain of its own",
        )
        kept_apart = ""
    else:
        kept_apart = ": their pages cannot set cookies the hub receives"
    yield Problem(
        "note",
        f"ports are on {ours}, a domain apart from the hub's ({hub_domain}){kept_apart}. *.{ours} must lead to the"
        f" proxy (DNS), and behind HTTPS its certificate must cover *.{ours} too (c.JupyterHub.ssl_cert, or the"
        " TLS proxy's in front)",
    )


def _cors_problems(settings: PortRoutes):
    lists = [("c.PortRoutes.cors_origins", settings.cors_origins)]
    lists += [(f"port {spec.key} cors_origins", spec.cors_origins) for spec in settings.port_specs if spec.cors_origins]
    for where, origins in lists:
        for origin in origins:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query):
                yield Problem(
                    "warning",
                    f"{where}: {origin!r} is not an origin (scheme://host[:port], no path or trailing slash): no browser sends it",
                )


def _role_problems(hub):
    try:
        held = user_role_as_loaded(hub)
    except Exception as e:  # the hub would refuse its roles too: say why, in one line
        return [Problem("error", f"the roles do not load: {type(e).__name__}: {e}")]
    problem = user_scopes_problem(held)
    return [Problem("error", problem)] if problem else []


def user_role_as_loaded(hub) -> set[str]:
    """The scopes of the ``user`` role as the hub (a ``JupyterHub`` of the config, not
    started) would load it, after ``install(c)`` added ours: JupyterHub's own code, into a
    database in memory."""
    logging.disable(logging.INFO)  # the database's set-up, told line by line
    try:
        hub.db_url = "sqlite://"
        hub.init_db()
        hub.authenticator = hub.authenticator_class(parent=hub)
        add_scopes(hub)
        asyncio.run(hub.init_role_creation())
        return user_role_scopes(hub.db)
    finally:
        logging.disable(logging.NOTSET)
