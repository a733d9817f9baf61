"""Wiring into a JupyterHub app: the sidecar service, the token API handlers, the scope.

Runs when the hub builds its proxy (``init_proxy``), after the whole config file was read and
before the hub reads services, roles and handlers, so it adds to whatever the admin set,
in whatever order the config file says it.
"""

from __future__ import annotations

import sys

from .config import PortRoutes

SERVICE_NAME = "jhproxy-routes"
SCOPE = "custom:jhproxy-routes:tokens"
SCOPE_DESCRIPTION = "Read and change the port tokens and port access of servers."


def sidecar_service(settings: PortRoutes) -> dict:
    """The managed-service entry that starts the auth sidecar."""
    return {
        "name": SERVICE_NAME,
        "url": settings.sidecar_url,
        "command": [sys.executable, "-m", "jhproxy_routes.sidecar"],
        "environment": {
            "JHPROXY_ROUTES_SIDECAR_TOKEN": settings.sidecar_api_token,
            "JHPROXY_ROUTES_UPSTREAM_TIMEOUT": str(settings.upstream_timeout),
        },
        "display": False,
    }


def wire_into_hub(app, settings: PortRoutes) -> None:
    from .handlers import token_handlers

    if settings.sidecar_managed and not any(s.get("name") == SERVICE_NAME for s in app.services):
        app.services = [*app.services, sidecar_service(settings)]
    # in place: the hub reads the list in init_handlers (assigning it would log a deprecation)
    app.extra_handlers.extend(token_handlers())
    if SCOPE not in app.custom_scopes:
        app.custom_scopes = {**app.custom_scopes, SCOPE: {"description": SCOPE_DESCRIPTION}}
    grant_to_users(app, f"{SCOPE}!user")
    publish_docker_ports(app, [spec.port for spec in settings.port_specs])


def configured(app, cls, name):
    """The value of ``c.<Class>.<name>`` that traitlets gives ``cls`` (most derived section wins)."""
    value = None
    for klass in reversed(cls.mro()):
        if klass.__name__ in app.config and name in app.config[klass.__name__]:
            value = app.config[klass.__name__][name]
    return value


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


def grant_to_users(app, scope: str) -> None:
    """Give every user ``scope`` on their own servers (JupyterHub 6: extra_user_scopes)."""
    if app.has_trait("extra_user_scopes"):
        app.extra_user_scopes = {*app.extra_user_scopes, scope}
        return
    roles = [dict(role) for role in app.load_roles]
    user_role = next((role for role in roles if role.get("name") == "user"), None)
    if user_role is None:
        roles.append({"name": "user", "scopes": ["self", scope]})
    elif scope not in user_role.get("scopes", []):
        user_role["scopes"] = [*user_role.get("scopes", ["self"]), scope]
    app.load_roles = roles
