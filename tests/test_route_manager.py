"""The route manager's logic (``routes.py``) without processes: where routes live, each
port's rule, and the ports never routed.
"""

import logging
from types import SimpleNamespace

import pytest
from traitlets import TraitError

from jhproxy_routes.config import PortRoutes, PortSpec
from jhproxy_routes.routeapi import RouteAPI, RouteAPIError
from jhproxy_routes.routes import RouteManager, port_rule
from jhproxy_routes.tokens import ServerAccess


def test_route_places_under_subdomain_host():
    """Where routes live: a path template on the hub's own host (with base_url), a host
    template on its port's host; and the URLs the token page shows for them."""

    def manager(template, subdomain_host="http://hub.localhost:8000", **kwargs):
        settings = PortRoutes(
            ports=[5000, "8000-8099"] if template.startswith("/") else [5000],
            route_template=template,
        )
        return RouteManager(
            settings,
            "/base/",
            RouteAPI("proxy", "http://127.0.0.1:1", "x"),
            None,
            subdomain_host=subdomain_host,
            hub_domain="hub.localhost",
            store=None,
            audit=None,
            sidecar=None,
            **kwargs,
        )

    paths = manager("/ports/{username}/{servername}/{port}/")
    assert paths.routespec("alice", "", 5000) == "hub.localhost/base/ports/alice/5000/"
    assert paths.ranges_routespec("alice", "dev") == "hub.localhost/base/ports/alice/dev/"
    assert paths.public_url(paths.routespec("alice", "", 5000), "ignored") == "http://hub.localhost:8000/base/ports/alice/5000/"
    hosts = manager("{port}--{username}.{subdomain_host}")
    assert hosts.routespec("alice", "", 5000) == "5000--alice.hub.localhost/"
    assert hosts.public_url("5000--alice.hub.localhost/", "ignored") == "http://5000--alice.hub.localhost:8000/"
    with pytest.raises(TraitError, match="needs c.JupyterHub.subdomain_host"):
        manager("{port}--{username}.{subdomain_host}", subdomain_host="")
    # with another subdomain hook a user named "5000--alice" could own alice's port host
    with pytest.raises(TraitError, match="default subdomain_hook"):
        manager("{port}--{username}.{subdomain_host}", subdomain_hook=lambda name, domain, kind: f"{name}.{domain}")


@pytest.mark.parametrize(
    "spec_access, mode, override, expected, admits",
    [
        # the server's token mode: the owner's login always, the token when there is one
        ("server", "disabled", None, "restricted", ["owner"]),
        ("server", "allow_all", None, "public", ["anyone"]),
        ("server", "token", None, "restricted", ["owner", "token"]),
        ("public", "disabled", None, "public", ["anyone"]),
        ("disabled", "allow_all", None, "disabled", []),  # off is off, even for the owner
        ("server", "token", "public", "public", ["anyone"]),
        ("public", "token", "server", "restricted", ["owner", "token"]),
        ("server", "token", "owner", "restricted", ["owner"]),  # no token for an owner-only port
        ("owner", "allow_all", None, "restricted", ["owner"]),
        ("server", "token", "users", "restricted", ["owner", "token", "users"]),
        ("users", "disabled", None, "restricted", ["owner", "users"]),
        ("server", "token", "group:staff", "restricted", ["owner", "token", "group:staff"]),
        ("group:staff", "allow_all", None, "public", ["anyone"]),
        # whoever the hub lets access the server (the sidecar asks it), and the token mode
        ("server", "token", "shared", "restricted", ["owner", "token", "shared"]),
        ("shared", "disabled", None, "restricted", ["owner", "shared"]),
        ("shared", "allow_all", None, "public", ["anyone"]),
    ],
)
def test_port_rule(spec_access, mode, override, expected, admits):
    port_access = {"5000": override} if override else {}
    access = ServerAccess(mode=mode, token_sha256="0" * 64 if mode == "token" else None, port_access=port_access)
    rule = port_rule(PortSpec(5000, access=spec_access), access)
    assert (rule.access, rule.who) == (expected, admits)


def test_the_hubs_own_ports_are_never_targets_but_a_containers_published_8000_is():
    """A local server's 8000 is the proxy itself; a container's 8000, published on some other
    host port, or a pod's 8000 at its own address, is the user's app."""
    settings = PortRoutes(ports=[8000, 5000, "8080-8090"])
    reserved = {8000: "the proxy's public port", 8081: "the hub's port"}
    manager = RouteManager(
        settings,
        "/",
        RouteAPI("proxy", "http://127.0.0.1:1", "x"),
        logging.getLogger("test"),
        lambda: reserved,
        store=None,
        audit=None,
        sidecar=None,
    )
    spawner = SimpleNamespace(port=8888)
    local = {8000: "http://127.0.0.1:8000", 5000: "http://127.0.0.1:5000", 8080: "http://127.0.0.1:8080"}
    assert manager._never_routed(spawner, local) == {8888: "its Jupyter server's own port", **reserved}
    published = {8000: "http://127.0.0.1:49153", 5000: "http://127.0.0.1:49154"}  # DockerSpawner's default mode
    assert 8000 not in manager._never_routed(spawner, published)
    pod = {8000: "http://10.0.0.7:8000", 5000: "http://10.0.0.7:5000", 8080: "http://10.0.0.7:8080"}
    assert manager._never_routed(spawner, pod) == {8888: "its Jupyter server's own port"}


async def test_a_server_withdrawn_leaves_the_sidecar_even_when_the_proxy_fails():
    """The proxy's delete fails (a store that does not answer): the sidecar still forgets the
    routes, so a route the proxy keeps serving ends at the sidecar's 503, not at the app."""

    class Table:
        def __init__(self, fails: bool):
            self.fails, self.deleted = fails, []

        async def delete(self, routespec):
            if self.fails:
                raise RouteAPIError("traefik etcd: delete 1 route(s): no answer within 10 s")
            self.deleted.append(routespec)

    proxy, sidecar = Table(fails=True), Table(fails=False)
    manager = RouteManager(PortRoutes(ports=[5000, 5001]), "/", proxy, None, store=None, audit=None, sidecar=sidecar)
    with pytest.raises(RouteAPIError, match="no answer"):
        await manager.withdraw("alice", "")
    assert sidecar.deleted == ["/ports/alice/5000/", "/ports/alice/5001/"]
