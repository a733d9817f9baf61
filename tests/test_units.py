"""Pure logic, no processes: HTTP framing, route lookup, header filtering, tokens, access.

What an attacker would try is in the parameters: smuggling through disagreeing framing,
climbing out of a route prefix, a prefix that is a string prefix but not a segment prefix.
"""

import asyncio
import json
import time
from types import SimpleNamespace

import httpx
import pytest
from traitlets import TraitError

from jhproxy_routes.audit import AuditLog, DenialLog
from jhproxy_routes.config import PortSpec
from jhproxy_routes.http1 import (
    HTTPError,
    copy_chunked,
    parse_request_head,
    request_body_framing,
)
from jhproxy_routes.routeapi import routespec_from_api_key, routespec_to_api_path
from jhproxy_routes.routes import port_rule
from jhproxy_routes.sidecar.login import HubLogin
from jhproxy_routes.sidecar.ratelimit import BadTokenLimiter
from jhproxy_routes.sidecar.server import filter_cookies, split_query
from jhproxy_routes.sidecar.table import RouteTable
from jhproxy_routes.tokens import ServerAccess, hash_token, new_token, token_matches


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    "raw, status",
    [
        (head("GET /x HTTP/1.1", "Host: a", "Content-Length: 5", "Transfer-Encoding: chunked"), 400),
        (head("GET /x HTTP/1.1", "Content-Length: 5", "Content-Length: 6"), 400),
        (head("GET /x HTTP/1.1", "Content-Length: 5", "Content-Length: 5"), 400),
        (head("GET /x HTTP/1.1", "Content-Length: -1"), 400),
        (head("GET /x HTTP/1.1", "Content-Length: 0x10"), 400),
        (head("GET /x HTTP/1.1", "Transfer-Encoding: gzip, chunked"), 400),
        (head("GET /x HTTP/1.1", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), 400),
        (head("GET /x HTTP/1.0", "Transfer-Encoding: chunked"), 400),
    ],
)
def test_ambiguous_framing_is_refused(raw, status):
    with pytest.raises(HTTPError) as info:
        request_body_framing(parse_request_head(raw))
    assert info.value.status == status


@pytest.mark.parametrize(
    "raw, status",
    [
        (head("GET /x HTTP/1.1", "X-A: 1", " folded"), 400),
        (head("GET /x HTTP/1.1", "Bad Name: 1"), 400),
        (head("GET /x HTTP/1.1", "X: a\x00b"), 400),
        (head("GET /x HTTP/1.1", "X: a\rb"), 400),
        (head("GET /x HTTP/1.1", "X: a\nb"), 400),
        (head("GET /x HTTP/1.1", "X\xe9: 1"), 400),
        (head("GET /x HTTP/1.1", ": 1"), 400),
        (head("GET /x HTTP/1.1", "no colon"), 400),
        (head("GET http://evil/x HTTP/1.1"), 400),
        (head("GET * HTTP/1.1"), 400),
        (head("GET /x HTTP/2.0"), 400),
        (head("GET /\xff HTTP/1.1"), 400),
        (head("GET /x\tHTTP/1.1 HTTP/1.1"), 400),
        (head("GET\n /x HTTP/1.1"), 400),
        (head("GET /x HTTP/1.1", *[f"X-{i}: 1" for i in range(257)]), 431),
        (head("GET  /x HTTP/1.1"), 400),
        (head("G(T /x HTTP/1.1"), 400),
    ],
)
def test_malformed_heads_are_refused(raw, status):
    with pytest.raises(HTTPError) as info:
        parse_request_head(raw)
    assert info.value.status == status


def test_header_errors_name_their_reason():
    reasons = {}
    for line in ("X-A: 1\r\n folded", "X: a\x01b", "Bad Name: 1"):
        with pytest.raises(HTTPError) as info:
            parse_request_head(head("GET /x HTTP/1.1", line))
        reasons[line] = info.value.message
    assert "obs-fold" in reasons["X-A: 1\r\n folded"]
    assert reasons["X: a\x01b"] == "Control characters in header X."
    assert reasons["Bad Name: 1"] == "Malformed header line."


def test_header_names_and_values_as_sent():
    request = parse_request_head(head("GET /x HTTP/1.1", "X!#$%&'*+.^_`|~: \t v a\tl \t", "Empty:", "Host:h"))
    assert request.headers == [("X!#$%&'*+.^_`|~", "v a\tl"), ("Empty", ""), ("Host", "h")]
    assert request.get("host") == "h"


def test_framing_of_good_requests():
    assert request_body_framing(parse_request_head(head("POST / HTTP/1.1", "Content-Length: 12"))) == ("length", 12)
    assert request_body_framing(parse_request_head(head("POST / HTTP/1.1", "Transfer-Encoding: Chunked"))) == ("chunked", 0)
    assert request_body_framing(parse_request_head(head("GET / HTTP/1.1"))) == ("none", 0)


class Sink:
    def __init__(self):
        self.data = b""

    def write(self, data):
        self.data += data

    async def drain(self):
        pass


async def copy_chunks(raw: bytes) -> bytes:
    reader = asyncio.StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    sink = Sink()
    await copy_chunked(reader, sink)
    return sink.data


async def test_chunked_bodies_are_checked():
    assert await copy_chunks(b"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n") == b"3\r\nabc\r\n0\r\n\r\n"
    for bad in (b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcd\r\n0\r\n\r\n", b"-3\r\nabc\r\n0\r\n\r\n", b"\r\n"):
        with pytest.raises(HTTPError):
            await copy_chunks(bad)


def route(target="http://127.0.0.1:5000", access="public", **extra):
    return {"target": target, "access": access, **extra}


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


def test_route_places_under_subdomain_host():
    """Where routes live: a path template on the hub's own host (with base_url), a host
    template on its port's host; and the URLs the token page shows for them."""
    from jhproxy_routes.config import PortRoutes
    from jhproxy_routes.routeapi import RouteAPI
    from jhproxy_routes.routes import RouteManager

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
                {**route("http://10.0.0.5:8000"), "last": 8099},
                {**route("http://10.0.0.5:9000", access="restricted", token_sha256="a" * 64), "last": 9009, "strip_prefix": True},
            ],
            "allowed": "5000, 8000-8099, 9000-9009",
            "excluded": [8088],
            "username": "alice",
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
    found, rest = table.lookup("/ports/alice/9009")
    assert (found.port, found.access, found.strip_prefix, rest) == (9009, "restricted", True, "/")
    assert found.token_sha256 == "a" * 64 and found.owner == "alice"
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


@pytest.mark.parametrize(
    "data, message",
    [
        (route(target="https://x:1"), "target"),
        (route(target="http://x"), "target"),
        (route(access="everyone"), "access"),
        (route(access="restricted", token_sha256="abc"), "token_sha256"),
        (route(access="restricted", username=""), "owner"),
        (route(access="restricted", username="alice", groups="staff"), "groups"),
        (route(cors_origins="*"), "cors_origins"),
    ],
)
def test_table_refuses_bad_route_data(data, message):
    with pytest.raises(ValueError, match=message):
        RouteTable().set("/p", data)


@pytest.mark.parametrize(
    "cookie, kept",
    [
        ("jupyterhub-hub-login=a; app=1", "app=1"),
        ("app=1;jupyterhub-session-id=x;  _xsrf=y ; other=2", "app=1; other=2"),
        ("jhproxy-routes-auth=s", ""),
        ("jupyterhub-user-alice=z", ""),
        ("not_jupyterhub-x=1", "not_jupyterhub-x=1"),
        # JupyterHub's cookie_host_prefix_enabled, and the sidecar's own behind HTTPS
        ("__Host-jupyterhub-hub-login=a; __host-jhproxy-routes-session-1=b; __Secure-_xsrf=c; __Host-app=1", "__Host-app=1"),
        ("__Host-service-announcements=t; service-x=1", "service-x=1"),
    ],
)
def test_cookie_filter(cookie, kept):
    assert filter_cookies(cookie) == kept


def test_token_query_parameter_is_removed():
    assert split_query("a=1&proxy_token=t&b=2") == ("t", "a=1&b=2")
    assert split_query("a=1") == (None, "a=1")
    token, rest = split_query("proxy_token=t1&proxy_token=t2")
    assert token == "t1" and "proxy_token" not in rest
    # an encoded name is still the token, and is still removed
    assert split_query("proxy%5Ftoken=t&x=1") == ("t", "x=1")
    assert split_query("proxy_%74oken=t&x=1") == ("t", "x=1")
    assert split_query("jhproxy_routes_%6Cogin=t&x=1", "jhproxy_routes_login") == ("t", "x=1")
    # the rest of the query is passed on byte for byte, not re-encoded
    assert split_query("a=%FF&proxy_token=t&b=\u00e9;c") == ("t", "a=%FF&b=\u00e9;c")


def test_tokens():
    token = new_token()
    assert len(token) >= 43 and new_token() != token
    digest = hash_token(token)
    assert token_matches(token, digest)
    assert not token_matches(token[:-1], digest)
    assert not token_matches("", digest)
    assert not token_matches("é\udcff", digest)  # odd input is compared, not crashed on


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
    ],
)
def test_port_rule(spec_access, mode, override, expected, admits):
    port_access = {"5000": override} if override else {}
    access = ServerAccess(mode=mode, token_sha256="0" * 64 if mode == "token" else None, port_access=port_access)
    rule = port_rule(PortSpec(5000, access=spec_access), access)
    assert (rule.access, rule.who) == (expected, admits)


def test_bad_token_limiter_counts_per_client_and_route_and_forgets():
    limiter = BadTokenLimiter(limit=3, window=0.3, max_entries=2)
    assert [limiter.failed("c1", "/r") for _ in range(3)] == [False, False, True]
    assert limiter.retry_after("c1", "/r") >= 1
    assert limiter.retry_after("c2", "/r") == 0 and limiter.retry_after("c1", "/other") == 0
    time.sleep(0.35)
    assert limiter.retry_after("c1", "/r") == 0  # the window has passed
    for client in ("a", "b", "c"):  # bounded: the oldest entry goes
        limiter.failed(client, "/r")
    assert len(limiter._failures) == 2 and ("a", "/r") not in limiter._failures
    assert BadTokenLimiter(limit=0).failed("c", "/r") is False  # 0: no limit


def test_denials_are_capped_per_client(tmp_path):
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    denials = DenialLog(audit, per_minute=3)
    for i in range(10):
        denials.record("1.2.3.4", reason="no credentials", path="/p" * 1000)
    denials.record("5.6.7.8", reason="no credentials")
    denials._clients["1.2.3.4"][0] -= 1  # as if a minute had passed
    denials.record("1.2.3.4", reason="no credentials")
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["event"], e["client"]) for e in entries] == [
        *[("denied", "1.2.3.4")] * 3,
        ("denied", "5.6.7.8"),
        ("denials suppressed", "1.2.3.4"),
        ("denied", "1.2.3.4"),
    ]
    assert entries[4]["count"] == 7


def test_audit_log_lines_are_whole_json(tmp_path):
    path = tmp_path / "audit.jsonl"
    first, second = AuditLog(str(path)), AuditLog(str(path))  # hub and sidecar: one file
    first.record("denied", reason="wrong token", path='/p\n{"forged": 1}')
    second.record("settings changed", user="ann")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["denied", "settings changed"]
    assert json.loads(lines[0])["path"] == '/p\n{"forged": 1}'  # a newline cannot start a line of its own
    AuditLog("").record("denied")  # off: nothing, no error


def test_the_hubs_own_ports_are_never_targets_but_a_containers_published_8000_is():
    """A local server's 8000 is the proxy itself; a container's 8000, published on some other
    host port, or a pod's 8000 at its own address, is the user's app."""
    import logging
    from types import SimpleNamespace

    from jhproxy_routes.config import PortRoutes
    from jhproxy_routes.routeapi import RouteAPI
    from jhproxy_routes.routes import RouteManager

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
