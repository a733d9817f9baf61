"""The sidecar's route table (``sidecar/table.py``): lookup by whole path segments and by
host, port ranges, and what it refuses (climbing out of a prefix, a string prefix that is
not a segment prefix, bad route data); and the route keys of CHP's API (``routeapi.py``).
"""

import json

import pytest

from jhproxy_routes.contract import PortRange, RangesEntry, RouteEntry
from jhproxy_routes.http1 import (
    HTTPError,
)
from jhproxy_routes.routeapi import routespec_from_api_key, routespec_to_api_path
from jhproxy_routes.sidecar.table import RouteTable
from tests.tables import route


def test_lookup_is_longest_whole_segment_prefix():
    table = RouteTable()
    table.set("/ports/alice/5000", route("http://127.0.0.1:5000"))
    table.set("/ports/alice/dev/5000", route("http://127.0.0.1:6000"))
    found, rest = table.lookup("/ports/alice/5000/a/b/")
    assert found.port == 5000 and rest == "/a/b/"
    found, rest = table.lookup("/ports/alice/dev/5000")
    assert found.port == 6000 and rest == "/"
    # a string prefix is not a segment prefix
    assert table.lookup("/ports/alice/50001/x") is None
    assert table.lookup("/ports/alic/5000") is None
    assert table.lookup("/") is None
    # percent-encoded names match their decoded key
    table.set("/ports/a b/5000", route())
    assert table.lookup("/ports/a%20b/5000/x")[1] == "/x"


def test_host_routes_are_found_by_host_and_path_routes_by_path():
    """CHP's host routing: an entry with by_host is matched against the Host header (without
    its port, as CHP does) and the path; it is never found by a path that names its host,
    and a path entry never by a host."""
    table = RouteTable()
    table.set("/5000--alice.hub.localhost", route(by_host=True))
    table.set(
        "/hub.localhost/ports/alice",
        {
            "ranges": [{**route("http://10.0.0.5:8000"), "last": 8099}],
            "allowed": "8000-8099",
            "username": "alice",
            "by_host": True,
        },
    )
    table.set("/ports/bob/5000", route("http://127.0.0.1:6000"))
    assert table.by_host == 2
    found, rest = table.lookup("/a/b/", "5000--alice.hub.localhost")
    assert (found.key, found.path_depth, rest) == ("/5000--alice.hub.localhost", 0, "/a/b/")
    found, rest = table.lookup("/ports/alice/8042/x", "hub.localhost")
    assert (found.port, found.key, found.path_depth, rest) == (8042, "/hub.localhost/ports/alice/8042", 3, "/x")
    assert table.lookup("/5000--alice.hub.localhost/a") is None
    assert table.lookup("/", "5000--ALICE.hub.localhost") is None  # as CHP: hosts as sent
    assert table.lookup("/ports/bob/5000/x", "hub.localhost") is None
    assert table.lookup("/ports/bob/5000/x")[0].port == 6000
    with pytest.raises(HTTPError) as info:
        table.lookup("/x", "..")
    assert info.value.status == 400
    table.set("/5000--alice.hub.localhost", route())  # replaced by a path entry: counted once
    assert table.by_host == 1 and table.delete("/hub.localhost/ports/alice") and table.by_host == 0
    with pytest.raises(ValueError, match="must begin with a host name"):
        table.set("/5000--Alice.hub.localhost", route(by_host=True))


def test_route_keys_in_host_routing():
    assert routespec_to_api_path("5000--alice.hub.localhost/") == "/5000--alice.hub.localhost"
    assert routespec_to_api_path("/ports/a b/5000/") == "/ports/a b/5000"
    assert routespec_from_api_key("/5000--alice.hub.localhost", host_routing=True) == "5000--alice.hub.localhost/"
    assert routespec_from_api_key("/hub.localhost/ports/a b/5000", host_routing=True) == "hub.localhost/ports/a%20b/5000/"
    assert routespec_from_api_key("/ports/a b/5000") == "/ports/a%20b/5000/"


def ranges_table() -> RouteTable:
    table = RouteTable()
    table.set("/ports/alice/5000", route("http://127.0.0.1:5000"))
    table.set(
        "/ports/alice",
        {
            "ranges": [
                {**route("http://10.0.0.5:8000", access="restricted", shared=True), "last": 8099},
                {**route("http://10.0.0.5:9000", access="restricted", token_sha256="a" * 64), "last": 9009, "strip_prefix": True},
            ],
            "allowed": "5000, 8000-8099, 9000-9009",
            "excluded": [8088],
            "username": "alice",
            "servername": "lab",
        },
    )
    return table


def test_a_port_range_is_one_entry_that_reads_the_port_from_the_path():
    table = ranges_table()
    found, rest = table.lookup("/ports/alice/8050/api/x/")
    assert (found.host, found.port, found.key, found.entry, found.depth, rest) == (
        "10.0.0.5",
        8050,
        "/ports/alice/8050",
        "/ports/alice",
        3,
        "/api/x/",
    )
    assert (found.shared, found.owner, found.servername) == (True, "alice", "lab")  # the hub is asked about alice/lab
    found, rest = table.lookup("/ports/alice/9009")
    assert (found.port, found.access, found.strip_prefix, rest) == (9009, "restricted", True, "/")
    assert found.token_sha256 == "a" * 64 and found.owner == "alice" and not found.shared
    # a single port routed on its own keeps its own, longer, route
    found, rest = table.lookup("/ports/alice/5000/x")
    assert (found.host, found.port, found.ranges) == ("127.0.0.1", 5000, ())
    assert table.as_dict()["/ports/alice"]["allowed"] == "5000, 8000-8099, 9000-9009"


@pytest.mark.parametrize(
    "path, shown",
    [
        ("/ports/alice/8100/x", "Port 8100 is not"),  # just past a range
        ("/ports/alice/7999", "Port 7999 is not"),
        ("/ports/alice/8088/", "Port 8088 of this server is not routed"),  # the Jupyter server's own, in a range
        ("/ports/alice/" + "8" * 5000 + "/", "Port '888888888888' is not"),  # past int()'s digit limit
        ("/ports/alice/08050/", "Port '08050' is not"),  # one port, one key: no leading zeros
        ("/ports/alice/dev/8050", "Port 'dev' is not"),  # a named server that is not running
        ("/ports/alice/%D9%A1/", "is not in the allow-list"),  # a non-ASCII digit
        ("/ports/alice/", "Name a port"),
        ("/ports/alice", "Name a port"),
    ],
)
def test_a_port_outside_the_ranges_gets_404_naming_the_allowed(path, shown):
    with pytest.raises(HTTPError) as info:
        ranges_table().lookup(path)
    assert info.value.status == 404 and shown in info.value.message, info.value.message
    if "allow-list" in info.value.message:
        assert "(allowed: 5000, 8000-8099, 9000-9009)" in info.value.message


@pytest.mark.parametrize(
    "ranges, message",
    [
        ([], "non-empty"),
        ([{**route("http://h:8000")}], "last must be a higher port"),
        ([{**route("http://h:8000"), "last": 7000}], "last must be a higher port"),
        ([{**route("http://h:8000"), "last": True}], "last must be a higher port"),
        ([{**route("http://h:8000", access="open"), "last": 8001}], "access"),
        (["8000-8001"], "must be an object"),
        ([{**route("http://h:8000"), "last": 8001, "ranges": []}], "without ranges of its own"),
    ],
)
def test_bad_ranges_are_refused(ranges, message):
    with pytest.raises(ValueError, match=message):
        RouteTable().set("/p", {"ranges": ranges, "username": "alice"})


@pytest.mark.parametrize(
    "path",
    [
        "/ports/alice/5000/../bob/5000",
        "/ports/alice/5000/%2e%2e/x",
        "/ports/alice/5000/..%2fx",
        "/ports/alice/5000/x%5c..%5cy",
        "/ports/alice/5000/%00",
        "/ports/alice/5000/%ff",
    ],
)
def test_lookup_refuses_dot_segments_and_bad_encoding(path):
    table = RouteTable()
    table.set("/ports/alice/5000", route())
    with pytest.raises(HTTPError) as info:
        table.lookup(path)
    assert info.value.status == 400


def test_an_https_target_is_a_tls_route_with_a_pool_key_of_its_own():
    """A port whose app serves TLS (``protocol`` ``https``): its connections are never
    pooled with plain ones to the same host and port, in one port or a range."""
    table = RouteTable()
    table.set("/ports/alice/5000", route("https://127.0.0.1:5000"))
    table.set("/ports/bob/5000", route("http://127.0.0.1:5000"))
    ranges = [{"target": "https://127.0.0.1:8000", "last": 8099, "access": "public"}]
    table.set("/ports/carol", {"ranges": ranges, "username": "carol", "allowed": "8000-8099"})
    tls, _ = table.lookup("/ports/alice/5000/")
    plain, _ = table.lookup("/ports/bob/5000/")
    in_range, _ = table.lookup("/ports/carol/8042/")
    assert tls.tls and not plain.tls and in_range.tls
    assert tls.upstream == ("127.0.0.1", 5000, None, True) != plain.upstream == ("127.0.0.1", 5000, None, False)
    assert in_range.upstream == ("127.0.0.1", 8042, None, True)


@pytest.mark.parametrize(
    "data, message",
    [
        (route(target="ftp://x:1"), "target"),
        (route(target="https://x"), "target"),
        (route(target="http://x"), "target"),
        (route(access="everyone"), "access"),
        (route(access="restricted", token_sha256="abc"), "token_sha256"),
        (route(access="restricted", username=""), "owner"),
        (route(access="restricted", username="alice", groups="staff"), "groups"),
        (route(cors_origins="*"), "cors_origins"),
        (route(access="restricted", token_expires="1800000000"), "token_expires"),
        (route(access="restricted", token_expires=True), "token_expires"),
        (route(access="restricted", username="alice", shared=True), "servername"),
        (route(uid=True), "uid"),
        (route(uid=-1), "uid"),
        (route(uid="1001"), "uid"),
    ],
)
def test_table_refuses_bad_route_data(data, message):
    with pytest.raises(ValueError, match=message):
        RouteTable().set("/p", data)


@pytest.mark.parametrize("by_host", [False, True])
def test_an_entry_the_hub_sends_reads_back_as_itself(by_host):
    check = {
        "access": "restricted",
        "token_sha256": "a" * 64,
        "token_expires": 1800000000.5,
        "users": True,
        "groups": ("staff",),
        "shared": True,
        "cors_origins": ("*",),
        "strip_prefix": True,
        "activity": False,
        "scope_cookies": True,
        "by_host": by_host,
        "uid": 1001 if by_host else None,  # on a shared host, whose listener the app's must be
    }
    port = RouteEntry(target="http://10.0.0.5:5000", **check, username="alice", servername="dev", port=5000)
    ranges = RangesEntry(
        ranges=(PortRange(target=f"{'https' if by_host else 'http'}://10.0.0.5:8000", last=8099, **check),),
        allowed="5000, 8000-8099",
        excluded=(8088,),
        username="alice",
        servername="dev",
        port="8000-8099",
        by_host=by_host,
    )
    for entry in (port, ranges):
        sent = json.loads(json.dumps(entry.to_json()))
        assert (
            type(entry).from_json(sent) == entry and ("by_host" in sent) == by_host and ('"uid"' in json.dumps(sent)) == by_host
        )


def test_connections_to_an_app_are_pooled_by_whose_listener_they_reached():
    """Two users' routes to one address on a shared host never share a pooled connection."""
    table = RouteTable()
    table.set("/ports/alice/5000", route(uid=1001))
    table.set("/ports/bob/5000", route(uid=1002))
    table.set("/ports/bob", {"ranges": [route(last=5999, uid=1002)], "username": "bob"})
    alice, bob = (table.lookup(f"/ports/{user}/5000/")[0] for user in ("alice", "bob"))
    assert alice.upstream == ("127.0.0.1", 5000, 1001, False) and bob.upstream == ("127.0.0.1", 5000, 1002, False)
    assert table.lookup("/ports/bob/5001/")[0].upstream == ("127.0.0.1", 5001, 1002, False)
