"""Properties, checked by hypothesis on generated input (pure logic, no processes): route
lookup (longest prefix, no escape from a prefix), route templates (one route per server and
port, never a dot segment), header filtering (no hub or sidecar cookie, no token, ever).
"""

import re
from urllib.parse import quote, unquote, unquote_plus

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from jhproxy_routes.http1 import HTTPError, parse_request_head
from jhproxy_routes.route_templates import DNS_SAFE, RouteTemplate, dns_label
from jhproxy_routes.sidecar.access import filter_cookies, protected_cookie, split_query
from jhproxy_routes.sidecar.exchange import Exchange
from jhproxy_routes.sidecar.forward import upstream_headers
from jhproxy_routes.sidecar.server import Sidecar
from jhproxy_routes.sidecar.table import RouteTable

# no per-example deadline (a loaded CI machine is slow, not wrong), no example database on disk
settings.register_profile("jhproxy-routes", deadline=None, database=None, max_examples=300)
settings.load_profile("jhproxy-routes")

segment = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=8)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
ports = st.integers(1, 65535)


def route(port: int) -> dict:
    return {"target": f"http://10.0.0.1:{port}", "access": "public"}


@given(prefixes=st.lists(st.lists(segment, min_size=1, max_size=4), min_size=1, max_size=6), rest=st.lists(segment, max_size=4))
def test_lookup_finds_the_longest_whole_segment_prefix(prefixes, rest):
    table = RouteTable()
    for i, parts in enumerate(prefixes):
        if any(p in (".", "..") for p in parts):
            continue
        table.set("/" + "/".join(parts), route(1000 + i))
    raw_parts = [quote(p, safe="") for p in prefixes[0] + rest]
    raw_path = "/" + "/".join(raw_parts)
    try:
        found = table.lookup(raw_path)
    except HTTPError as e:  # refused, never looked up: a dot segment (also behind an encoded / or \), or a NUL
        dotted = [q for p in raw_parts for q in re.split(r"[/\\]", unquote(p))]
        assert e.status == 400 and any(q in (".", "..") or "\x00" in q for q in dotted)
        return
    wanted = [k for k in table.routes if tuple(prefixes[0] + rest)[: len(k)] == k]
    if not wanted:
        assert found is None
        return
    best = max(wanted, key=len)
    found_route, found_rest = found
    assert found_route.key == "/" + "/".join(best)
    # the rest is exactly what follows the prefix, so the app sees a path inside the prefix
    assert found_rest == "/" + "/".join(raw_parts[len(best) :])


@given(st.lists(st.sampled_from(["a", "/", ".", "%2e", "%2E", "%2f", "%5c", "\\", "%00", "%252e"]), max_size=30).map("".join))
def test_no_path_climbs_out_of_a_prefix(tail):
    table = RouteTable()
    table.set("/ports/alice/5000", route(5000))
    table.set("/ports/bob/5000", route(5001))
    try:
        found = table.lookup("/ports/alice/5000/" + tail)
    except HTTPError as e:
        assert e.status == 400
        return
    assert found is not None and found[0].key == "/ports/alice/5000"
    decoded = [unquote(p) for p in found[1].split("/")]
    assert not any(p in (".", "..") or "\x00" in p for p in decoded)


@settings(suppress_health_check=[HealthCheck.filter_too_much])
@given(a=st.tuples(names, st.one_of(st.just(""), names), ports), b=st.tuples(names, st.one_of(st.just(""), names), ports))
@example(a=("..", "", 5000), b=("x", "", 5000))
def test_templates_give_each_server_port_its_own_route(a, b):
    template = RouteTemplate("/ports/{username}/{servername}/{port}/")
    if not template.serves(a[0], a[1]):  # a dot-segment name, or a server named like a port: no routes
        assert {a[0], a[1]} & {".", ".."} or a[1].isdigit()
        return
    assume(template.serves(b[0], b[1]))
    spec_a, spec_b = template.render(*a), template.render(*b)
    assert spec_a.startswith("/ports/") and spec_a.endswith("/")
    segments = spec_a.strip("/").split("/")
    assert all(s and s not in (".", "..") for s in segments)
    assert unquote(segments[1]) == a[0]
    if a != b:
        assert spec_a != spec_b


cookie_name = st.one_of(
    st.sampled_from(
        ["jupyterhub-session-id", "jupyterhub-hub-login", "jupyterhub-user-alice", "_xsrf", "jhproxy-routes-session-1"]
    ),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=";=,"), min_size=1, max_size=12),
)
cookie_value = st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters=";"), max_size=12)


@given(st.lists(st.tuples(cookie_name, cookie_value), max_size=8), st.sampled_from(["; ", ";", " ; "]))
def test_cookie_filter_keeps_only_app_cookies(pairs, separator):
    header = separator.join(f"{k}={v}" for k, v in pairs)
    kept = filter_cookies(header)
    for pair in kept.split("; ") if kept else []:
        assert not protected_cookie(pair.split("=", 1)[0].strip())
    expected = [f"{k}={v}".strip() for k, v in pairs if not protected_cookie(k.strip())]
    assert kept == "; ".join(p for p in expected if p)


token_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)


@given(
    token=token_text,
    query=st.lists(st.tuples(st.sampled_from(["a", "proxy_token", "b", "proxy%5Ftoken"]), token_text), max_size=4),
)
@example(token="0", query=[("a", "proxy_token")])  # the name as another parameter's value: kept
def test_the_token_never_reaches_the_app(token, query):
    """Whatever the client sends, the head for the app has no token, header or query."""
    pairs = [("proxy_token", token), *query]
    target = "/ports/alice/5000/x?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)
    raw = f"GET {target} HTTP/1.1\r\nHost: h\r\nX-Proxy-Token: {token}\r\nx-proxy-token: {token}\r\n\r\n".encode()
    request = parse_request_head(raw)
    _, rest_query = split_query(request.start[1].partition("?")[2])
    sidecar = Sidecar("x")
    sidecar.table.set("/ports/alice/5000", route(5000))
    found_route, rest = sidecar.table.lookup("/ports/alice/5000/x")
    exchange = Exchange(None, request, "127.0.0.1")
    exchange.route, exchange.rest = found_route, rest
    headers = upstream_headers(exchange)
    assert not any(k.lower() == "x-proxy-token" for k, _ in headers)
    # no parameter of that name is left, however spelt ("proxy_token" as a value is the app's)
    assert all(unquote_plus(pair.partition("=")[0]) != "proxy_token" for pair in rest_query.split("&"))


label_names = st.one_of(
    st.text(max_size=50),
    st.text(st.sampled_from("aAxn-ü.5_"), max_size=12),
    st.sampled_from(["xn--tda", "ü", "u-x--1", "5000", "", "alice", "Alice"]),
)


@given(label_names, label_names)
@example("xn--tda", "ü")
def test_names_become_distinct_dns_labels(a, b):
    """One user's or server's host is never another's: the label is one to one (up to a
    hash of 80 bits), lower case, and a valid DNS label within its length."""
    label_a, label_b = dns_label(a, 40), dns_label(b, 40)
    assert DNS_SAFE.fullmatch(label_a) and len(label_a) <= 40 and not label_a.isdigit()
    if a != b:
        assert label_a != label_b
