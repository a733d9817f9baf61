"""Wiring into a JupyterHub app: the sidecar service, the token API handlers, the scope,
the templates (the port page, the home page's ports, "Ports" in the navbar).

Runs when the hub builds its proxy (``init_proxy``), after the whole config file was read and
before the hub reads services, roles and handlers, so it adds to whatever the admin set,
in whatever order the config file says it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jupyterhub.roles import get_default_roles

from .config import PortRoutes, configured
from .contract import SERVICE_NAME, TOKEN_ENV
from .handlers import token_handlers
from .scopes import LOGIN_SCOPE, SCOPE, SCOPE_DESCRIPTION

SERVICE_COMMON = {
    "name": SERVICE_NAME,
    # the navbar's "Ports" (templates/page.html) leads to /hub/proxytoken/ instead; without
    # it (an admin's own page.html), the Services menu does (``add_templates``)
    "display": False,
    # logging into a port is part of the hub, not a third party asking for access
    "oauth_no_confirm": True,
}
TEMPLATES = Path(__file__).parent / "templates"
# every user's: their own servers' port settings, and logging into ports through the sidecar
USER_SCOPES = (f"{SCOPE}!user", LOGIN_SCOPE)


def sidecar_service(settings: PortRoutes, authenticate_metrics: bool = True) -> dict:
    """The managed-service entry that starts the auth sidecar. Its metrics are protected
    as the hub's are (``c.JupyterHub.authenticate_prometheus``)."""
    return {
        **SERVICE_COMMON,
        "url": settings.sidecar_url,
        "command": [sys.executable, "-m", "jhproxy_routes.sidecar"],
        "environment": {TOKEN_ENV: settings.sidecar_api_token, **settings.sidecar_settings(authenticate_metrics).environ()},
    }


def external_sidecar_service(settings: PortRoutes) -> dict:
    """The service entry of a sidecar that runs elsewhere: the hub gives it an OAuth client
    (hub login on ports) and accepts ``sidecar_api_token`` as its API token, the one secret
    the sidecar and the hub share."""
    if not settings.has_explicit_sidecar_token:
        raise ValueError(
            "c.PortRoutes.sidecar_managed is False: set c.PortRoutes.sidecar_api_token (or"
            f" ${TOKEN_ENV}) to the secret the sidecar has"
        )
    return {**SERVICE_COMMON, "url": settings.sidecar_url, "api_token": settings.sidecar_api_token}


def wire_into_hub(app, settings: PortRoutes) -> None:
    navbar = add_templates(app)
    if not any(s.get("name") == SERVICE_NAME for s in app.services):
        service = (
            sidecar_service(settings, app.authenticate_prometheus)
            if settings.sidecar_managed
            else external_sidecar_service(settings)
        )
        app.services = [*app.services, {**service, "display": not navbar}]
    # in place: the hub reads the list in init_handlers (assigning it would log a deprecation)
    app.extra_handlers.extend(token_handlers())
    add_scopes(app)
    publish_docker_ports(app, [spec.port for spec in settings.port_specs if not spec.is_range])


def add_scopes(app) -> None:
    """Define our scope and grant it, and the login to ports, to users and their servers."""
    if SCOPE not in app.custom_scopes:
        app.custom_scopes = {**app.custom_scopes, SCOPE: {"description": SCOPE_DESCRIPTION}}
    grant_to_users(app, *USER_SCOPES)
    # code in a user's server (a notebook) may manage that server's port tokens, not the
    # user's other servers' (JupyterHub resolves !server to the server's own name)
    grant_to_role(app, "server", f"{SCOPE}!server")


def add_templates(app) -> bool:
    """Put our templates after the admin's own paths and before the hub's: ``home.html``
    (the hub's home page with each running server's ports) and ``page.html`` (the hub's, with
    "Ports" in the navbar) extend the hub's own by name (``templates/home.html``), so an
    admin's templates of those names still win, and ``jhproxy-routes.html`` can be overridden
    the same way. Whether our navbar entry is shown: not when the admin has a page.html."""
    hub_templates = os.path.normpath(os.path.join(app.data_files_path, "templates"))
    paths = [path for path in app.template_paths if os.path.normpath(path) != str(TEMPLATES)]
    normalised = [os.path.normpath(path) for path in paths]  # "/x/templates/" is the hub's too
    at = normalised.index(hub_templates) if hub_templates in normalised else len(paths)
    app.template_paths = [*paths[:at], str(TEMPLATES), *paths[at:]]
    return not any(os.path.isfile(os.path.join(path, "page.html")) for path in paths[:at])


def publish_docker_ports(app, ports: list[int]) -> None:
    """For a DockerSpawner, wrap the admin's ``extra_create_kwargs`` / ``extra_host_config``
    so that host-binding mode publishes the allowed ports too."""
    from .docker import DockerSpawner, publish_ports

    cls = app.spawner_class
    if DockerSpawner is None or not issubclass(cls, DockerSpawner):
        return
    create, host = publish_ports(configured(app, cls, "extra_create_kwargs"), configured(app, cls, "extra_host_config"), ports)
    app.config[cls.__name__].extra_create_kwargs = create
    app.config[cls.__name__].extra_host_config = host


def grant_to_users(app, *scopes: str) -> None:
    """Give every user ``scopes``: in the ``user`` role where the admin defines its scopes in
    ``load_roles`` (as JupyterHub 5's sharing docs do; JupyterHub 6 then ignores
    ``extra_user_scopes``), else JupyterHub 6's ``extra_user_scopes``, else (5) the ``user``
    role made from JupyterHub's default."""
    if app.has_trait("extra_user_scopes") and not defines_role_scopes(app, "user"):
        app.extra_user_scopes = {*app.extra_user_scopes, *scopes}
    else:
        grant_to_role(app, "user", *scopes)


def defines_role_scopes(app, name: str) -> bool:
    """Whether ``load_roles`` gives the role ``name`` scopes of its own (replacing the default's)."""
    return any(role.get("name") == name and "scopes" in role for role in app.load_roles)


def user_role_scopes(db) -> set[str]:
    """The scopes of the hub's ``user`` role as loaded into its database."""
    from jupyterhub import orm

    role = orm.Role.find(db, name="user")
    return set(role.scopes) if role is not None else set()


def user_scopes_problem(held: set[str]) -> str:
    """What is wrong ("" if nothing) with a ``user`` role holding ``held``, whatever gave it
    its scopes (the config, an authenticator's managed roles): the scopes users need
    (``USER_SCOPES``) that it lacks."""
    missing = [scope for scope in USER_SCOPES if scope not in held]
    if not missing:
        return ""
    return (
        f"JupyterHub's role 'user' lacks the scopes {', '.join(missing)}, which users need to log into ports and"
        " manage their port tokens (every such request would get 403): add them to the scopes of the role 'user'"
        " where it is defined (c.JupyterHub.load_roles, or the authenticator's managed roles)"
    )


def grant_to_role(app, name: str, *scopes: str) -> None:
    """Add ``scopes`` to JupyterHub's default role ``name`` in ``load_roles``, made from
    JupyterHub's definition if the admin did not define it (a role defined in ``load_roles``
    replaces the default's scopes)."""
    roles = [dict(role) for role in app.load_roles]
    role = next((role for role in roles if role.get("name") == name), None)
    default_scopes = next(r["scopes"] for r in get_default_roles() if r["name"] == name)
    if role is None:
        role = {"name": name, "scopes": list(default_scopes)}
        roles.append(role)
    role["scopes"] = [*role.get("scopes", default_scopes), *(s for s in scopes if s not in role.get("scopes", []))]
    app.load_roles = roles
