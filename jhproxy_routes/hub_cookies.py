"""What host templates ask of the hub's own cookies: JupyterHub's ``cookie_host_prefix_enabled``
behind HTTPS, and a warning over plain HTTP.

Ports on hosts below the hub's domain (``{subdomain_host}``) are sibling hosts of the hub. A
page of one (a ``public`` port goes straight to its app) may set a cookie for the whole
domain with the name and path of the hub's login (``Domain=hub.example.org; Path=/hub/``):
its visitors then use the hub as the page's owner (cookie tossing, JupyterHub's
CVE-2024-28233 class). With ``cookie_host_prefix_enabled`` JupyterHub names its login cookie
``__Host-jupyterhub-hub-login`` and reads no other; a browser takes a ``__Host-`` cookie only
from the host itself, only with ``Secure`` and over HTTPS, so no sibling can plant one. Over
plain HTTP a browser drops every ``Secure`` cookie but localhost's, so the setting would lock
everyone out of the hub: there no cookie name protects the hub, and ``check`` says so.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from traitlets import TraitError

from .config import configured
from .route_templates import RouteTemplate

SETTING = "c.JupyterHub.cookie_host_prefix_enabled"
HOST_PREFIX = "__Host-"


def over_https(subdomain_host: str) -> bool:
    return urlsplit(subdomain_host).scheme == "https"


def needs_host_prefix(template: RouteTemplate, subdomain_host: str) -> bool:
    """Whether the hub's login cookies must be ``__Host-`` cookies: ports on the hub's domain,
    behind HTTPS."""
    return template.on_hub_domain and bool(subdomain_host) and over_https(subdomain_host)


def prefix_refused(template: RouteTemplate, subdomain_host: str, configured_value) -> str:
    """Why the admin's ``cookie_host_prefix_enabled`` (None: not set) cannot be ("" if it can)."""
    if configured_value is not False or not needs_host_prefix(template, subdomain_host):
        return ""
    return (
        f"{SETTING} is False, but c.PortRoutes.route_template {template.template!r} puts ports on hosts below the"
        f" hub's domain ({urlsplit(subdomain_host).hostname}): a public port's page could set the hub's login cookie"
        " for the whole domain and log its visitors into the hub as its owner (cookie tossing). Leave it unset"
        " (jhproxy-routes turns it on), or give ports a domain apart from the hub's"
    )


def use_host_prefix(app, template: RouteTemplate) -> None:
    """When the hub starts (its proxy is made after ``init_hub``, from the whole config file):
    turn ``cookie_host_prefix_enabled`` on where ports need it and the config leaves it unset,
    naming the hub's cookie as ``init_hub`` does when it is on; raise TraitError where the
    config sets it False."""
    if not needs_host_prefix(template, app.subdomain_host) or app.cookie_host_prefix_enabled:
        return
    refused = prefix_refused(template, app.subdomain_host, configured(app, type(app), "cookie_host_prefix_enabled"))
    if refused:
        raise TraitError(refused)
    app.cookie_host_prefix_enabled = True
    if not app.hub.cookie_name.startswith(HOST_PREFIX):
        app.hub.cookie_name = HOST_PREFIX + app.hub.cookie_name


def plain_http_warning(template: RouteTemplate, subdomain_host: str) -> str:
    """What a host template exposes over plain HTTP ("" for HTTPS, or a path template)."""
    if not template.by_host or not subdomain_host or over_https(subdomain_host):
        return ""
    hub = urlsplit(subdomain_host).hostname
    if template.on_hub_domain:
        cookies = (
            f"a port's page can set cookies for the hub's whole domain ({hub}): its owner's hub login, which"
            " logs its visitors into the hub as them (cookie tossing; the __Host- cookies of"
            f" {SETTING} that stop it need HTTPS), or so many that the hub answers 431 (a cookie bomb)"
        )
    else:
        cookies = (
            f"a port's page cannot touch the hub's cookies, but can set cookies for every port host"
            f" ({template.port_domain}): its own port login, or so many that the ports answer 431"
        )
    return (
        f"c.PortRoutes.route_template {template.template!r} over plain HTTP ({subdomain_host}): {cookies}. And"
        " Chromium sends no fetch metadata (Sec-Fetch-*) to plain-HTTP hosts other than localhost, so the sidecar"
        " cannot tell another port's frame or image from a page opened at the top: those get in with the"
        " visitor's port login. Serve the hub over HTTPS"
    )
