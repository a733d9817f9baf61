"""jhproxy-routes: expose an allow-list of ports of JupyterHub users' servers through the
hub's configurable-http-proxy, with per-user access control.

In ``jupyterhub_config.py``::

    import jhproxy_routes
    c.PortRoutes.ports = [5000, 5001]
    jhproxy_routes.install(c)
"""

from .config import PortRoutes

__version__ = "0.1.0"
__all__ = ["PortRoutes", "__version__", "install"]

PROXY_CLASS = "jhproxy_routes.proxy.PortRoutesProxy"


def install(c) -> None:
    """Wire jhproxy-routes into a JupyterHub config.

    Sets the proxy class; when the hub starts, that proxy adds the auth sidecar service, the
    ``/hub/proxytoken/`` handlers and the users' scope to whatever else the config sets, and
    with ports on hosts below the hub's domain behind HTTPS turns on JupyterHub's
    ``cookie_host_prefix_enabled`` (``hub_cookies.py``).
    """
    current = c.JupyterHub.get("proxy_class")
    if current not in (None, PROXY_CLASS, "configurable-http-proxy", "default") and not _is_ours(current):
        raise ValueError(
            f"jhproxy_routes.install: c.JupyterHub.proxy_class is already {current!r}; "
            "jhproxy-routes works with configurable-http-proxy only and sets its own subclass"
        )
    c.JupyterHub.proxy_class = PROXY_CLASS


def _is_ours(proxy_class) -> bool:
    from .proxy import PortRoutesProxy

    return isinstance(proxy_class, type) and issubclass(proxy_class, PortRoutesProxy)
