"""jhproxy-routes: expose an allow-list of ports of JupyterHub users' servers through the
hub's proxy (configurable-http-proxy, or Traefik's file provider), with per-user access control.

In ``jupyterhub_config.py``::

    import jhproxy_routes
    c.PortRoutes.ports = [5000, 5001]
    jhproxy_routes.install(c)
"""

from .config import PortRoutes

__version__ = "0.1.0"
__all__ = ["PortRoutes", "__version__", "install"]

PROXY_CLASS = "jhproxy_routes.proxy.PortRoutesProxy"
TRAEFIK_PROXY_CLASS = "jhproxy_routes.traefik.TraefikPortRoutesProxy"
# the hub's proxy_class (entry-point name or class path) -> ours in its place
OURS_FOR = {
    None: PROXY_CLASS,
    "default": PROXY_CLASS,
    "configurable-http-proxy": PROXY_CLASS,
    "jupyterhub.proxy.ConfigurableHTTPProxy": PROXY_CLASS,
    PROXY_CLASS: PROXY_CLASS,
    "traefik_file": TRAEFIK_PROXY_CLASS,
    "jupyterhub_traefik_proxy.TraefikFileProviderProxy": TRAEFIK_PROXY_CLASS,
    "jupyterhub_traefik_proxy.fileprovider.TraefikFileProviderProxy": TRAEFIK_PROXY_CLASS,
    TRAEFIK_PROXY_CLASS: TRAEFIK_PROXY_CLASS,
}
TRAEFIK_KEY_VALUE = (
    "traefik_etcd",
    "traefik_consul",
    "traefik_redis",
    "TraefikEtcdProxy",
    "TraefikConsulProxy",
    "TraefikRedisProxy",
)


def install(c) -> None:
    """Wire jhproxy-routes into a JupyterHub config.

    Sets the proxy class: ours in place of the one the config chose (configurable-http-proxy,
    the default, or jupyterhub-traefik-proxy's ``traefik_file``); when the hub starts, that
    proxy adds the auth sidecar service, the ``/hub/proxytoken/`` handlers and the users'
    scope to whatever else the config sets, and with ports on hosts below the hub's domain
    behind HTTPS turns on JupyterHub's ``cookie_host_prefix_enabled`` (``hub_cookies.py``).
    """
    c.JupyterHub.proxy_class = proxy_class_for(c.JupyterHub.get("proxy_class"))


def proxy_class_for(proxy_class):
    """Our proxy class in place of the hub's ``proxy_class`` (a name, a class, or None);
    ValueError naming the setting when there is none."""
    if _is_ours(proxy_class):
        return proxy_class
    name = f"{proxy_class.__module__}.{proxy_class.__qualname__}" if isinstance(proxy_class, type) else proxy_class
    ours = OURS_FOR.get(name)
    if ours == TRAEFIK_PROXY_CLASS:
        try:
            import jupyterhub_traefik_proxy  # noqa: F401
        except ImportError:
            raise ValueError(
                f"c.JupyterHub.proxy_class is {name!r}, but jupyterhub-traefik-proxy is not installed:"
                " pip install 'jhproxy-routes[traefik]'"
            ) from None
    if ours is not None:
        return ours
    if isinstance(name, str) and name.rsplit(".", 1)[-1] in TRAEFIK_KEY_VALUE:
        raise ValueError(
            f"c.JupyterHub.proxy_class is {name!r}: jhproxy-routes supports Traefik's file provider"
            " (traefik_file, as The Littlest JupyterHub runs it), not yet its key-value providers (etcd, consul, redis)"
        )
    raise ValueError(
        f"c.JupyterHub.proxy_class is {name!r}: jhproxy-routes works with configurable-http-proxy"
        " or jupyterhub-traefik-proxy's traefik_file, and sets its own subclass of them"
    )


def _is_ours(proxy_class) -> bool:
    from .proxy import PortRoutesMixin

    return isinstance(proxy_class, type) and issubclass(proxy_class, PortRoutesMixin)
