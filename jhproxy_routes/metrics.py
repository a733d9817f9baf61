"""The route manager's Prometheus metrics. They live in the hub's process and registry,
so the hub serves them with its own at ``/hub/metrics``. (The sidecar serves its own:
``sidecar/metrics.py``.)"""

from prometheus_client import Counter, Gauge, Histogram

ROUTES = Gauge(
    "jhproxy_routes_routes",
    "Port routes wanted at the last reconciliation, by kind"
    " (direct: from the proxy to the app; sidecar: through the auth sidecar)",
    ["kind"],
)
RECONCILE_DURATION = Histogram(
    "jhproxy_routes_reconcile_duration_seconds",
    "Seconds one reconciliation of the proxy's and the sidecar's tables took",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RECONCILE_ERRORS = Counter(
    "jhproxy_routes_reconcile_errors",
    "Reconciliations that failed: the proxy or the sidecar was unreachable or refused a change",
)
RECONCILE_FIXES = Counter(
    "jhproxy_routes_reconcile_fixes",
    "Routes a reconciliation found missing or stale and fixed, by table (proxy, sidecar) and change"
    " (added, removed): a steady rise means something else changes the tables",
    ["table", "change"],
)
SERVER_UPDATE_ERRORS = Counter(
    "jhproxy_routes_server_update_errors",
    "Route updates of one server that failed and were left to the next reconciliation, by event (start, stop, settings)",
    ["event"],
)
ACTIVITY_UPDATES = Counter(
    "jhproxy_routes_activity_updates",
    "Servers whose last_activity the hub moved forward because of traffic on their ports,"
    " by source (proxy: public ports on a direct route; sidecar: every other port)",
    ["source"],
)
ACTIVITY_PENDING = Gauge(
    "jhproxy_routes_activity_pending_seconds",
    "Age of the oldest port activity not yet written into the hub's database: the time since the"
    " last collection that reached the proxy and every sidecar replica (it grows while they fail)",
)
