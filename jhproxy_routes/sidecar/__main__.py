"""Run the sidecar: ``python -m jhproxy_routes.sidecar [--ip IP] [--port PORT]``.

As a JupyterHub managed service it listens where ``JUPYTERHUB_SERVICE_URL`` says. The
hub's token for the route API comes from ``JHPROXY_ROUTES_SIDECAR_TOKEN``, its settings from\nthe environment the hub gives it (``contract.SidecarSettings``). With the hub's
service environment (``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_CLIENT_ID``, ...), browsers of
hub users get into restricted ports by their hub login; without it, only tokens do.

Run elsewhere (``sidecar_managed = False``: its own container or pod, maybe several
replicas), it needs only ``JHPROXY_ROUTES_SIDECAR_TOKEN`` and ``JUPYTERHUB_API_URL`` (and
``JUPYTERHUB_BASE_URL`` if not ``/``): the rest of the service environment follows from the
service the hub registers for it (``wiring.external_sidecar_service``).
"""

import argparse
import asyncio
import logging
import os
import signal
import sys
from urllib.parse import urlsplit

from jupyterhub.utils import url_path_join
from prometheus_client import disable_created_metrics

from ..audit import AuditLog
from ..contract import CLIENT_ID, SERVICE_NAME, TOKEN_ENV, SidecarSettings
from ..logsafe import EscapingFormatter
from .access import parse_networks
from .login import HubLogin
from .ratelimit import BadTokenLimiter
from .server import Sidecar, serve


def main(argv=None) -> None:
    service_url = urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8765"))
    try:
        settings = SidecarSettings.from_environ(os.environ)
    except ValueError as e:
        sys.exit(f"jhproxy-routes sidecar: {e}")
    parser = argparse.ArgumentParser(prog="python -m jhproxy_routes.sidecar", description=__doc__.splitlines()[0])
    parser.add_argument("--ip", default=service_url.hostname or "127.0.0.1")
    parser.add_argument("--port", type=int, default=service_url.port or 8765)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    external_service_environment()
    # no *_created series: they would double the size of the metrics, which have a few
    # series per route (and there can be tens of thousands of routes)
    disable_created_metrics()
    # every message one line, whatever a request put into it (forged log lines)
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("[%(levelname).1s %(asctime)s sidecar] %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    api_token = os.environ.get(TOKEN_ENV)
    if not api_token:
        sys.exit(f"jhproxy-routes sidecar: set {TOKEN_ENV} (the hub's token for the route API)")
    # the hub's public URL when the hub gives it, else its public host (under subdomain_host
    # the sidecar's own pages and the ports are on other hosts than the hub's)
    hub_url = os.environ.get("JUPYTERHUB_PUBLIC_HUB_URL") or os.environ.get("JUPYTERHUB_HOST", "").rstrip("/") + url_path_join(
        os.environ.get("JUPYTERHUB_BASE_URL", "/"), "hub/"
    )
    sidecar = Sidecar(
        api_token,
        upstream_timeout=settings.upstream_timeout,
        client_timeout=settings.client_timeout,
        client_idle_timeout=settings.client_idle_timeout,
        max_idle_connections=settings.max_idle_connections,
        login=hub_login(api_token, settings.login_cache_max_age),
        hub_page=url_path_join(hub_url, "proxytoken/"),
        audit=AuditLog(settings.audit_log),  # empty: none
        limiter=BadTokenLimiter(limit=settings.bad_token_limit, window=settings.bad_token_window),
        authenticate_metrics=settings.authenticate_metrics,
        metrics_by_route=settings.metrics_by_route,
        trusted_proxies=parse_networks(settings.trusted_proxies),
        token_cookies=settings.token_cookies,
    )
    asyncio.run(run(sidecar, args.ip, args.port))


def external_service_environment() -> None:
    """Fill in the service environment of a sidecar the hub does not start, from the
    service it registers for it: name, OAuth client, prefix, and the shared secret as the
    API token. A managed sidecar has all of it already; nothing is overwritten."""
    token = os.environ.get(TOKEN_ENV)
    if not (token and os.environ.get("JUPYTERHUB_API_URL")):
        return
    prefix = url_path_join(os.environ.get("JUPYTERHUB_BASE_URL", "/"), "services", SERVICE_NAME) + "/"
    for name, value in {
        "JUPYTERHUB_API_TOKEN": token,
        "JUPYTERHUB_SERVICE_NAME": SERVICE_NAME,
        "JUPYTERHUB_CLIENT_ID": CLIENT_ID,
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_OAUTH_CALLBACK_URL": prefix + "oauth_callback",
    }.items():
        os.environ.setdefault(name, value)


def hub_login(api_token: str, cache_max_age: int) -> HubLogin:
    """Hub login through HubOAuth when the hub gave us an OAuth client, else tokens only."""
    if not (os.environ.get("JUPYTERHUB_API_TOKEN") and os.environ.get("JUPYTERHUB_CLIENT_ID")):
        logging.warning("no JupyterHub OAuth client in the environment: restricted ports take tokens only")
        return HubLogin(api_token)
    from jupyterhub.services.auth import HubOAuth

    return HubLogin(api_token, HubOAuth(cache_max_age=cache_max_age))


async def run(sidecar: Sidecar, ip: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and close pooled connections."""
    try:
        server = await serve(sidecar, ip, port)
    except OSError as e:  # the address is taken (or not this host's): one clear line, no traceback
        logging.error("cannot listen on http://%s:%i: %s", ip, port, e.strerror or e)
        sys.exit(1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.info("listening on http://%s:%i", ip, port)
    await stop.wait()
    server.close()
    sidecar.pool.close_all()
    logging.info("stopped")


if __name__ == "__main__":
    main()
