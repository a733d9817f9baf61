"""The sidecar's Prometheus metrics, served at ``/_jhproxy-routes/metrics`` (and at
``metrics`` below its service prefix, through the hub's proxy).

Per route: requests by outcome, body bytes each way. Overall: denied requests by reason,
the apps' latency (request sent to response head), the size of the route table. A route's
series are made on its first request and dropped when the hub removes the route, so their
number follows the live routes, not every route there ever was. With ``by_route`` False
(hubs with many thousands of servers) all routes share one series, labelled ``route=""``.

Like the hub's ``/hub/metrics``, scraping needs a token: a JupyterHub token with the scope
``read:metrics`` (asked of the hub, cached), or the hub's route-API token; unless the hub
says ``c.JupyterHub.authenticate_prometheus = False``.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..http1 import HTTPError

# what became of a request to a route, by the status the sidecar itself answered
OUTCOME_OF_STATUS = {302: "login", 403: "denied", 429: "denied", 502: "app_error", 504: "app_timeout"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def outcome_of(status: int) -> str:
    """``login``, ``denied``, ``app_error``, ``app_timeout``, ``bad_request`` or ``error``."""
    return OUTCOME_OF_STATUS.get(status) or ("bad_request" if status < 500 else "error")


class SidecarMetrics:
    def __init__(
        self,
        route_count: Callable[[], int],
        by_route: bool = True,
        routed: Callable[[str], bool] = lambda key: True,
        activity_pending: Callable[[], float] = lambda: 0.0,
    ):
        """``routed(key)``: whether the table still has that entry (a request still running
        on a removed route must not bring its series back). ``activity_pending()``: age of
        the oldest server activity the hub has not collected."""
        self.by_route = by_route
        self.routed = routed
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "jhproxy_routes_sidecar_requests",
            "Requests to port routes, by route and outcome (forwarded, preflight, login, denied,"
            " app_error, app_timeout, bad_request, error, aborted)",
            ["route", "outcome"],
            registry=self.registry,
        )
        self.denials = Counter(
            "jhproxy_routes_sidecar_denied",
            "Requests refused (403, 429; 502 when a shared host's port is another user's), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.body_bytes = Counter(
            "jhproxy_routes_sidecar_body_bytes",
            "Body bytes forwarded, by route and direction (to_app, to_client; websockets too)",
            ["route", "direction"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "jhproxy_routes_sidecar_upstream_latency_seconds",
            "Seconds from a request sent to an app until the app's response head",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        routes = Gauge("jhproxy_routes_sidecar_routes", "Routes in the sidecar's table", registry=self.registry)
        routes.set_function(route_count)
        pending = Gauge(
            "jhproxy_routes_sidecar_activity_pending_seconds",
            "Age of the oldest server activity (a request let through) the hub has not collected yet:"
            " it grows when the hub stops asking (every last_activity_interval)",
            registry=self.registry,
        )
        pending.set_function(activity_pending)
        # route -> {(metric, label): child}: labels() costs a lock and a lookup per call
        self._series: dict[str, dict] = {}

    def _child(self, metric, route: str, label: str):
        route = route if self.by_route else ""
        series = self._series.get(route)
        if series is None:
            if route and not self.routed(route):
                return NOT_COUNTED
            series = self._series[route] = {}
        child = series.get((metric, label))
        if child is None:
            child = series[(metric, label)] = metric.labels(route, label)
        return child

    def request(self, route: str, outcome: str) -> None:
        self._child(self.requests, route, outcome).inc()

    def outcome(self, route: str) -> RequestOutcome:
        """``with metrics.outcome(key) as outcome:`` counts one request to a route when the
        block ends: ``forwarded`` unless the block sets ``outcome.value`` or raises."""
        return RequestOutcome(self, route)

    def body(self, route: str, direction: str, size: int) -> None:
        if size:
            self._child(self.body_bytes, route, direction).inc(size)

    def denied(self, reason: str) -> None:
        self.denials.labels(reason).inc()

    def forget(self, route: str) -> None:
        """Drop the series of a route the hub removed."""
        if not self.by_route:
            return
        for metric, label in self._series.pop(route, {}):
            metric.remove(route, label)

    def exposition(self, compress: bool = False) -> bytes:
        """The text format (gzipped if ``compress``): ~0.5 s for 20,000 routes, so the
        sidecar runs it in a thread."""
        text = generate_latest(self.registry)
        return gzip.compress(text, compresslevel=1) if compress else text


class _NotCounted:
    """The series of a route that is gone."""

    @staticmethod
    def inc(amount: float = 1) -> None:
        pass


NOT_COUNTED = _NotCounted()


class RequestOutcome:
    __slots__ = ("metrics", "route", "value")

    def __init__(self, metrics: SidecarMetrics, route: str):
        self.metrics, self.route, self.value = metrics, route, "forwarded"

    def __enter__(self) -> RequestOutcome:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            # an answer of the sidecar's own, or the client went away / the sidecar stops
            self.value = outcome_of(error.status) if isinstance(error, HTTPError) else "aborted"
        self.metrics.request(self.route, self.value)
