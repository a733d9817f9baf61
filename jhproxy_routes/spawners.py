"""``TokenizedDockerSpawner``: for configs written for jhproxy.

A thin convenience over the hooks: the routes, tokens and port bindings work for any
DockerSpawner once ``jhproxy_routes.install(c)`` is called. This class only keeps the seed's
per-spawner settings, which override ``c.PortRoutes.default_startup_behavior`` and
``c.PortRoutes.shutdown_behavior`` when set.
"""

from dockerspawner import DockerSpawner
from traitlets import CaselessStrEnum


class TokenizedDockerSpawner(DockerSpawner):
    """DockerSpawner with jhproxy's ``default_startup_behavior`` and ``shutdown_behavior``."""

    default_startup_behavior = CaselessStrEnum(
        ["disabled", "allow_all", "random"],
        None,
        allow_none=True,
        config=True,
        help="""As ``c.PortRoutes.default_startup_behavior``, for this spawner (jhproxy's name).""",
    )

    shutdown_behavior = CaselessStrEnum(
        ["pass", "disable"],
        None,
        allow_none=True,
        config=True,
        help="""As ``c.PortRoutes.shutdown_behavior``, for this spawner (jhproxy's name).""",
    )
