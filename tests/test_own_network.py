"""Which servers have a network of their own (``targets.has_own_network``): only there may the
in-server part relay an app on 127.0.0.1 to the server's address. Real spawner classes,
configured as admins configure them; the server's address is set as the hub sets it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dockerspawner import DockerSpawner
from jupyterhub.spawner import Spawner

from jhproxy_routes.targets import has_own_network

pytestmark = pytest.mark.unit


def running(spawner, host: str):
    """The spawner with the server's address the hub routes to (``spawner.server.host``)."""
    spawner.orm_spawner = SimpleNamespace(server=None)
    type(spawner).server = property(lambda self: SimpleNamespace(host=host))
    return spawner


class BatchNodeSpawner(Spawner):
    """A spawner of servers on other machines that many users share (a batch or SSH node)."""

    async def start(self):
        return ("10.1.2.3", 8888)

    async def stop(self, now=False):
        pass

    async def poll(self):
        return None


@pytest.mark.parametrize(
    ("settings", "own"),
    [
        ({"network_name": "podman"}, True),
        ({"network_name": "bridge", "use_internal_ip": False}, True),  # published ports: still its own network
        ({"network_name": "host"}, False),
        ({"network_name": "none"}, False),
        ({"network_name": "container:sidekick"}, False),
        ({"network_name": "bridge", "extra_host_config": {"network_mode": "host"}}, False),
    ],
)
def test_docker(settings, own):
    class Docker(DockerSpawner):  # a class each: the server property is set on it
        pass

    assert has_own_network(running(Docker(**settings), "http://10.88.0.5:8888")) is own


def test_a_node_shared_by_many_users_is_not_taken_for_a_container():
    assert has_own_network(running(BatchNodeSpawner(), "http://10.1.2.3:8888")) is False
