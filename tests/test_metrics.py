"""Prometheus metrics, scraped as Prometheus would: the sidecar's (requests by route and
outcome, denials by reason, bytes, upstream latency) and the route manager's in the hub's
``/hub/metrics`` (route counts, reconciliation fixes and errors). A real hub, CHP, sidecar
and app; the text is read with prometheus_client's own parser."""

import os
import signal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jhproxy_routes.sidecar.metrics import SidecarMetrics
from tests.rig import ADMIN_TOKEN, wait_for

OWNER = "metered"


def samples(text: str) -> dict:
    """``{(name, frozenset(labels.items())): value}`` of every sample."""
    return {
        (s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def apps(make_app):
    return {"protected": make_app(), "public": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    ports = [apps["protected"].port, {"port": apps["public"].port, "access": "public", "scope_cookies": False}]
    return make_hub(ports)


@pytest.fixture(scope="module")
def token(hub):
    api_token = hub.user_token(OWNER)
    hub.spawn(OWNER)
    return hub.proxytoken(api_token, "POST", content="random").json()


def scrape_sidecar(hub, token=ADMIN_TOKEN, via_proxy=False) -> httpx.Response:
    url = f"{hub.url}/services/jhproxy-routes/metrics" if via_proxy else f"{hub.sidecar_url}/_jhproxy-routes/metrics"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url, headers=headers, timeout=30)


def scrape_hub(hub) -> dict:
    response = hub.get("/hub/metrics", headers={"Authorization": f"token {ADMIN_TOKEN}"})
    assert response.status_code == 200, response.text
    return samples(response.text)


def test_sidecar_metrics_need_a_token_with_read_metrics(hub, token):
    # what a stranger, or a user with an ordinary token, would try: the route names in the
    # metrics say who runs what
    user_token = hub.user_token("curious")
    for via_proxy in (False, True):
        assert scrape_sidecar(hub, None, via_proxy).status_code == 403
        assert scrape_sidecar(hub, "not-a-token", via_proxy).status_code == 403
        assert scrape_sidecar(hub, user_token, via_proxy).status_code == 403
        assert scrape_sidecar(hub, token, via_proxy).status_code == 403  # a port token is no hub token
        response = scrape_sidecar(hub, ADMIN_TOKEN, via_proxy)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.headers["Content-Encoding"] == "gzip"  # httpx asks for it, as Prometheus does
        assert "jhproxy_routes_sidecar_requests" in response.text


def test_sidecar_counts_requests_denials_bytes_and_latency(hub, apps, token):
    port = apps["protected"].port
    route = f"/ports/{OWNER}/{port}"
    url = hub.url + route
    before = samples(scrape_sidecar(hub).text)
    upload = b"u" * 12345
    assert httpx.post(url + "/up", content=upload, headers={"X-Proxy-Token": token}).status_code == 200
    download = httpx.get(url + "/download", params={"bytes": 54321}, headers={"X-Proxy-Token": token})
    assert download.status_code == 200 and len(download.content) == 54321
    assert httpx.get(url + "/x", headers={"X-Proxy-Token": "wrong"}).status_code == 403
    assert httpx.get(url + "/x").status_code == 403
    assert httpx.get(url + "/x").status_code == 403
    preflight = httpx.options(url + "/x", headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 204
    after = samples(scrape_sidecar(hub).text)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("jhproxy_routes_sidecar_requests_total", route=route, outcome="forwarded") == 2
    assert grew("jhproxy_routes_sidecar_requests_total", route=route, outcome="denied") == 3
    assert grew("jhproxy_routes_sidecar_requests_total", route=route, outcome="preflight") == 1
    assert grew("jhproxy_routes_sidecar_denied_total", reason="wrong token") == 1
    assert grew("jhproxy_routes_sidecar_denied_total", reason="no credentials") == 2
    assert grew("jhproxy_routes_sidecar_body_bytes_total", route=route, direction="to_app") == len(upload)
    # the echo's JSON answer to the upload, and the download
    assert grew("jhproxy_routes_sidecar_body_bytes_total", route=route, direction="to_client") > 54321
    assert grew("jhproxy_routes_sidecar_upstream_latency_seconds_count") == 2
    assert grew("jhproxy_routes_sidecar_upstream_latency_seconds_sum") > 0
    assert value(after, "jhproxy_routes_sidecar_routes") == 1  # the public port goes direct


def test_hub_metrics_count_routes_and_fixes(hub, apps, token):
    wait_for(lambda: value(scrape_hub(hub), "jhproxy_routes_routes", kind="sidecar") == 1, 20, "the route gauge")
    scraped = scrape_hub(hub)
    assert value(scraped, "jhproxy_routes_routes", kind="direct") == 1
    assert value(scraped, "jhproxy_routes_reconcile_duration_seconds_count") >= 1
    # someone removes our route from CHP behind the hub's back: the next reconciliation
    # puts it back, and says so
    fixed = value(scraped, "jhproxy_routes_reconcile_fixes_total", table="proxy", change="added")
    routespec = f"/ports/{OWNER}/{apps['public'].port}"
    response = httpx.delete(f"{hub.chp_api}/api/routes{routespec}", headers={"Authorization": f"token {hub.chp_token}"})
    assert response.status_code == 204
    wait_for(
        lambda: value(scrape_hub(hub), "jhproxy_routes_reconcile_fixes_total", table="proxy", change="added") == fixed + 1,
        20,
        "the fix to be counted",
    )
    assert routespec in hub.port_routes()


def test_hub_metrics_count_failed_reconciliations(hub, token):
    errors = value(scrape_hub(hub), "jhproxy_routes_reconcile_errors_total")
    [sidecar] = hub.child_pids("jhproxy_routes.sidecar")
    os.kill(sidecar, signal.SIGSTOP)  # a hung sidecar: every route API call times out
    try:
        wait_for(
            lambda: value(scrape_hub(hub), "jhproxy_routes_reconcile_errors_total") > errors,
            60,
            "a failed reconciliation to be counted",
            hub.log_path,
            interval=1,
        )
    finally:
        os.kill(sidecar, signal.SIGCONT)


def test_a_removed_route_leaves_no_series(hub, apps, token):
    route = f"/ports/{OWNER}/{apps['protected'].port}"
    assert value(samples(scrape_sidecar(hub).text), "jhproxy_routes_sidecar_requests_total", route=route, outcome="forwarded") > 0
    hub.stop_server(OWNER)
    text = scrape_sidecar(hub).text
    assert route not in text
    assert value(samples(text), "jhproxy_routes_sidecar_routes") == 0


def test_one_series_for_all_routes_when_not_by_route():
    metrics = SidecarMetrics(lambda: 2, by_route=False)
    for route in ("/ports/a/5000", "/ports/b/5000"):
        with metrics.outcome(route):
            metrics.body(route, "to_app", 10)
        metrics.forget(route)  # the shared series stays
    scraped = samples(metrics.exposition().decode())
    assert value(scraped, "jhproxy_routes_sidecar_requests_total", route="", outcome="forwarded") == 2
    assert value(scraped, "jhproxy_routes_sidecar_body_bytes_total", route="", direction="to_app") == 20
    assert "/ports/" not in metrics.exposition().decode()


def test_a_request_still_running_on_a_removed_route_does_not_bring_its_series_back():
    live = {"/ports/a/5000"}
    metrics = SidecarMetrics(lambda: len(live), routed=lambda key: key in live)
    with metrics.outcome("/ports/a/5000"):
        live.clear()  # the hub removes the route while the request runs
        metrics.forget("/ports/a/5000")
        metrics.body("/ports/a/5000", "to_client", 5)
    assert "/ports/a/5000" not in metrics.exposition().decode()
    live.add("/ports/a/5000")  # routed again: counted again
    with metrics.outcome("/ports/a/5000"):
        pass
    assert (
        value(
            samples(metrics.exposition().decode()),
            "jhproxy_routes_sidecar_requests_total",
            route="/ports/a/5000",
            outcome="forwarded",
        )
        == 1
    )
