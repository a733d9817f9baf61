"""Wiring into a JupyterHub app: the sidecar service, the token API handlers, the scope.

Runs when the hub builds its proxy (``init_proxy``), after the whole config file was read and
before the hub reads services, roles and handlers, so it adds to whatever the admin set,
in whatever order the config file says it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jupyterhub.roles import get_default_roles

from .config import SERVICE_NAME, PortRoutes, configured
from .contract import TOKEN_ENV
from .handlers import token_handlers
from .scopes import LOGIN_SCOPE, SCOPE, SCOPE_DESCRIPTION

SERVICE_COMMON = {
    "name": SERVICE_NAME,
    # in the hub's Services menu: the sidecar sends browsers on to /hub/proxytoken/
    "display": True,
    # logging into a port is part of the hub, not a third party asking for access
    "oauth_no_confirm": True,
}
TEMPLATES = Path(__file__).parent / "templates"


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
    if not any(s.get("name") == SERVICE_NAME for s in app.services):
        service = (
            sidecar_service(settings, app.authenticate_prometheus)
            if settings.sidecar_managed
            else external_sidecar_service(settings)
        )
        app.services = [*app.services, service]
    # in place: the hub reads the list in init_handlers (assigning it would log a deprecation)
    app.extra_handlers.extend(token_handlers())
    # after the admin's and the hub's own paths: page.html stays theirs, ours can be overridden
    app.template_paths = [*app.template_paths, str(TEMPLATES)]
    if SCOPE not in app.custom_scopes:
        app.custom_scopes = {**app.custom_scopes, SCOPE: {"description": SCOPE_DESCRIPTION}}
    grant_to_users(app, f"{SCOPE}!user", LOGIN_SCOPE)
    # code in a user's server (a notebook) may manage that server's port tokens, not the
    # user's other servers' (JupyterHub resolves !server to the server's own name)
    grant_to_role(app, "server", f"{SCOPE}!server")
    publish_docker_ports(app, [spec.port for spec in settings.port_specs if not spec.is_range])


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
    """Give every user ``scopes`` (JupyterHub 6: extra_user_scopes; 5: the user role)."""
    if app.has_trait("extra_user_scopes"):
        app.extra_user_scopes = {*app.extra_user_scopes, *scopes}
    else:
        grant_to_role(app, "user", *scopes)


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
