"""The sidecar's hub login (``sidecar/login.py``) without processes: where a login ticket may
go, and the cookies of a port's own host behind HTTPS.
"""

from types import SimpleNamespace

import httpx
import pytest

from jhproxy_routes.http1 import (
    HTTPError,
)
from jhproxy_routes.sidecar.login import HubLogin
from jhproxy_routes.sidecar.table import RouteTable
from tests.tables import route


@pytest.mark.parametrize(
    "origin, by_host, refused",
    [
        ("http://5000--alice.hub.localhost:8000", True, ""),
        ("http://hub.localhost:8000", False, ""),
        # a Host header with userinfo or another port, when the login began: the ticket would
        # go to that address, with the state cookie of whoever began it
        ("http://5000--alice.hub.localhost:8000@evil.example:8000", True, "no longer routed"),
        ("http://5000--alice.hub.localhost:9999", True, "another address"),
        ("https://5000--alice.hub.localhost:8000", True, "another address"),
        ("http://5000--alice.hub.localhost:80008000", True, "another address"),
        ("http://evil.example:8000", True, "no longer routed"),
        ("http://evil.example:8000", False, "no longer routed"),
        ("http://hub.localhost:8000@evil.example:8000", False, "no longer routed"),
        (
            "http://5000--alice.hub.localhost:8000",
            False,
            "no longer routed",
        ),  # a path route's login: the callback's own host only
    ],
)
def test_a_login_ticket_goes_only_to_the_ports_own_origin(origin, by_host, refused):
    table = RouteTable()
    if by_host:
        table.set("/5000--alice.hub.localhost", route(by_host=True))
    else:
        table.set("/ports/alice/5000", route())
    target = "/x?y=1" if by_host else "/ports/alice/5000/x?y=1"
    if not refused:
        assert HubLogin._route_at(table, origin, target, "http://hub.localhost:8000").port == 5000
        return
    with pytest.raises(HTTPError, match=refused):
        HubLogin._route_at(table, origin, target, "http://hub.localhost:8000")


def test_a_login_on_a_path_route_on_the_hubs_host_under_subdomain_host():
    """Path templates under subdomain_host: the route's key begins with the hub's host, the
    callback is on the sidecar's own host, and the ticket goes back to the hub's host."""
    table = RouteTable()
    table.set("/hub.localhost/ports/alice/5000", route(by_host=True))
    found = HubLogin._route_at(
        table, "http://hub.localhost:8000", "/ports/alice/5000/x", "http://jhproxy-routes--service.hub.localhost:8000"
    )
    assert found.key == "/hub.localhost/ports/alice/5000" and found.path_depth == 3
    with pytest.raises(HTTPError, match="no longer routed"):
        HubLogin._route_at(
            table, "http://evil.localhost:8000", "/ports/alice/5000/x", "http://jhproxy-routes--service.hub.localhost:8000"
        )


def test_a_login_crosses_to_a_port_domain_only_for_a_routed_port_host():
    """Ports on a domain apart from the hub's: the callback is on the hub's domain, the ticket
    goes to the port's host there, and to no other host of either domain."""
    table = RouteTable()
    table.set("/5000--alice.ports-content.test", route(by_host=True))
    callback = "https://jhproxy-routes--service.hub.test:8443"
    assert HubLogin._route_at(table, "https://5000--alice.ports-content.test:8443", "/x", callback).port == 5000
    for origin in (
        "https://5001--alice.ports-content.test:8443",  # not routed
        "https://ports-content.test:8443",
        "https://hub.test:8443",
        "https://5000--alice.ports-content.test.evil.example:8443",
        "https://5000--alice.ports-content.test:8443@evil.example:8443",
    ):
        with pytest.raises(HTTPError, match="no longer routed"):
            HubLogin._route_at(table, origin, "/x", callback)
    with pytest.raises(HTTPError, match="another address"):
        HubLogin._route_at(table, "http://5000--alice.ports-content.test:8443", "/x", callback)


def test_behind_https_the_cookies_of_a_whole_host_are_host_cookies():
    """On a port's own host behind HTTPS the state and session cookies are ``__Host-``
    cookies: a page of a sibling host cannot plant one (cookie tossing), so a cookie under
    the plain name, as a Domain cookie would come, is not taken."""
    auth = SimpleNamespace(
        login_url="https://hub.example.org/hub/api/oauth2/authorize",
        oauth_redirect_uri="https://jhproxy-routes--service.hub.example.org/services/jhproxy-routes/oauth_callback",
    )
    login = HubLogin("secret", auth)
    table = RouteTable()
    table.set("/5000--alice.hub.example.org", route(by_host=True))
    port_route = table.lookup("/", "5000--alice.hub.example.org")[0]
    start = login.start("https://5000--alice.hub.example.org", "/x", "/", True)
    cookie = dict(start)["Set-Cookie"]
    name, _, value = cookie.split(";")[0].partition("=")
    assert name.startswith("__Host-jhproxy-routes-state-") and "; Path=/;" in cookie and cookie.endswith("Secure")
    state = login._open("state", httpx.URL(dict(start)["Location"]).params["state"], 60)
    ticket = login._seal("ticket", {"state": state["state"], "route": port_route.key, "token": "t", "next": "/x"})
    with pytest.raises(HTTPError, match="another browser"):
        login.land(ticket, f"{name.removeprefix('__Host-')}={value}", port_route, "/", True)
    landed = login.land(ticket, f"{name}={value}", port_route, "/", True)
    session = [v for k, v in landed if k == "Set-Cookie" and "session" in v][0]
    assert session.startswith("__Host-jhproxy-routes-session-") and session.endswith("Secure")
    # a path route's cookies have a path of their own: no __Host- (which needs Path=/)
    path_start = dict(login.start("https://hub.example.org", "/ports/alice/5000/x", "/ports/alice/5000/", True))
    assert path_start["Set-Cookie"].startswith("jhproxy-routes-state-")
