"""jhproxy-routes: expose an allow-list of ports of JupyterHub users' servers through the
hub's proxy (configurable-http-proxy, or Traefik with its file, etcd or redis provider), with
per-user access control.

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
TRAEFIK_ETCD_PROXY_CLASS = "jhproxy_routes.traefik_kv.TraefikEtcdPortRoutesProxy"
TRAEFIK_REDIS_PROXY_CLASS = "jhproxy_routes.traefik_kv.TraefikRedisPortRoutesProxy"
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
    "traefik_etcd": TRAEFIK_ETCD_PROXY_CLASS,
    "jupyterhub_traefik_proxy.TraefikEtcdProxy": TRAEFIK_ETCD_PROXY_CLASS,
    "jupyterhub_traefik_proxy.etcd.TraefikEtcdProxy": TRAEFIK_ETCD_PROXY_CLASS,
    TRAEFIK_ETCD_PROXY_CLASS: TRAEFIK_ETCD_PROXY_CLASS,
    "traefik_redis": TRAEFIK_REDIS_PROXY_CLASS,
    "jupyterhub_traefik_proxy.TraefikRedisProxy": TRAEFIK_REDIS_PROXY_CLASS,
    "jupyterhub_traefik_proxy.redis.TraefikRedisProxy": TRAEFIK_REDIS_PROXY_CLASS,
    TRAEFIK_REDIS_PROXY_CLASS: TRAEFIK_REDIS_PROXY_CLASS,
}
# what each Traefik proxy of ours needs installed: (module, pip package) and the extra that brings them
TRAEFIK_NEEDS = {
    TRAEFIK_PROXY_CLASS: ([("jupyterhub_traefik_proxy", "jupyterhub-traefik-proxy")], "traefik"),
    TRAEFIK_ETCD_PROXY_CLASS: ([("jupyterhub_traefik_proxy", "jupyterhub-traefik-proxy"), ("etcd3", "etcdpy")], "traefik-etcd"),
    TRAEFIK_REDIS_PROXY_CLASS: ([("jupyterhub_traefik_proxy", "jupyterhub-traefik-proxy"), ("redis", "redis")], "traefik-redis"),
}
TRAEFIK_CONSUL = ("traefik_consul", "TraefikConsulProxy")


def install(c) -> None:
    """Wire jhproxy-routes into a JupyterHub config.

    Sets the proxy class: ours in place of the one the config chose (configurable-http-proxy,
    the default, or jupyterhub-traefik-proxy's ``traefik_file``, ``traefik_etcd`` or
    ``traefik_redis``); when the hub starts, that
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
    if ours is not None and ours != PROXY_CLASS:
        _check_traefik_installed(name, ours)
        return ours
    if ours is not None:
        return ours
    if isinstance(name, str) and name.rsplit(".", 1)[-1] in TRAEFIK_CONSUL:
        raise ValueError(
            f"c.JupyterHub.proxy_class is {name!r}: jhproxy-routes works with Traefik's file, etcd and redis"
            " providers (traefik_file, traefik_etcd, traefik_redis), not consul, which jupyterhub-traefik-proxy"
            " deprecates (its client library is unmaintained)"
        )
    raise ValueError(
        f"c.JupyterHub.proxy_class is {name!r}: jhproxy-routes works with configurable-http-proxy"
        " or jupyterhub-traefik-proxy's traefik_file, traefik_etcd and traefik_redis, and sets its own subclass of them"
    )


def _check_traefik_installed(name: str, ours: str) -> None:
    """ValueError naming what is missing when jupyterhub-traefik-proxy or its store's client is not installed."""
    import importlib.util

    modules, extra = TRAEFIK_NEEDS[ours]
    missing = [package for module, package in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ValueError(
            f"c.JupyterHub.proxy_class is {name!r}, but {' and '.join(missing)} is not installed:"
            f" pip install 'jhproxy-routes[{extra}]'"
        )


def _is_ours(proxy_class) -> bool:
    from .proxy import PortRoutesMixin

    return isinstance(proxy_class, type) and issubclass(proxy_class, PortRoutesMixin)
