"""Route templates: where a port of a server appears in the proxy's URL space.

A *path template* such as ``/ports/{username}/{servername}/{port}/`` renders to an escaped
path that starts and ends with ``/`` (below the hub's ``base_url``, and on the hub's own
domain under ``subdomain_host``).

A *host template* such as ``{port}--{username}.{subdomain_host}`` gives each port a host of
its own, so its own origin (JupyterHub's ``subdomain_host``, with CHP's host routing). It
renders to a host routespec in JupyterHub's sense: ``5000--alice.hub.example.org/``. Names
become DNS labels one to one, in the manner of JupyterHub's default subdomains (``dns_label``); a label
begins with ``{port}--``, which none of JupyterHub's own subdomains do (with its default
``subdomain_hook``, which host templates on the hub's domain therefore need).

A host template may instead end in a *port domain* of its own, apart from the hub's
(``{port}--{username}.ports.example-content.org``): its pages can then set no cookie the hub
receives (``hub_problem`` refuses the hub's own domain, a parent of it and a domain below it).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import string
from urllib.parse import quote, urlsplit

import idna
from jupyterhub.utils import subdomain_hook_idna
from traitlets import TraitError

FIELDS = {"username", "servername", "port"}
WHOLE_SEGMENT_FIELDS = ("username", "servername")
DOT_NAMES = (".", "..")
HUB_PATHS = ("hub", "user", "services")  # JupyterHub's own, below base_url
SUBDOMAIN_HOST = ".{subdomain_host}"
DNS_LITERAL = re.compile(r"[a-z0-9-]*")
DNS_SAFE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
USERNAME_LABEL_LENGTH = 40  # as JupyterHub's User.dns_safe_name: room for "{port}--"
LONGEST_VALUE = {"port": 5, "username": USERNAME_LABEL_LENGTH, "servername": 63}


def dns_label(name: str, max_length: int = 63) -> str:
    """A name as one DNS label, one to one, in the manner of JupyterHub's default
    subdomains: the name itself if it is a lower-case label without ``--``; else its IDNA
    form (``xn--...``); else ``u-<stub>--<80-bit hash>``. The three forms never meet (only
    the last two have ``--``, at different places), and hosts are compared in lower case,
    so ``Alice`` is hashed rather than sharing ``alice``'s host."""
    if "--" not in name and DNS_SAFE.fullmatch(name) and not name.isdigit() and len(name) <= max_length:
        return name
    try:  # only a name that is not ASCII: idna takes "xn--tda" as it is, which is "ü"'s
        encoded = "" if name.isascii() else idna.encode(name).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        encoded = ""
    if encoded.startswith("xn--") and DNS_SAFE.fullmatch(encoded) and len(encoded) <= max_length:
        return encoded
    stub = "".join(c for c in name.lower() if c.isascii() and c.isalnum())[:8] or "x"
    return f"u-{stub}--{hashlib.sha256(name.encode()).hexdigest()[:20]}"


def escape_segment(value: str) -> str:
    """Escape a name for one path segment, as JupyterHub's ``url_escape_path`` does."""
    return quote(value, safe="@~")


class RouteTemplate:
    """A validated route template; ``render`` gives the routespec of one server's port."""

    def __init__(self, template: str, where: str = "c.PortRoutes.route_template", domain: str = ""):
        """``domain``: the host name of JupyterHub's ``subdomain_host`` (host templates)."""
        self.where = where
        self.domain = domain
        self.port_domain = ""
        self.by_host = not template.startswith("/")
        if self.by_host:
            self._parse_host(template.rstrip("/"))
            return
        if not template.endswith("/"):
            template += "/"
        if any(c in template for c in "?#%\\") or any(c.isspace() for c in template):
            raise TraitError(f"{where}: {template!r} may not contain '?', '#', '%', '\\' or spaces")
        self.segments = template.strip("/").split("/")
        used = set()
        for segment in self.segments:
            if segment in ("", ".", ".."):
                raise TraitError(f"{where}: {template!r} has an empty, '.' or '..' segment")
            names = self._fields(segment, template)
            used.update(names)
            if len(names) > 1:
                raise TraitError(
                    f"{where}: {template!r}: fields {sorted(names)} share one segment; "
                    "give each its own segment so that no two routes can be confused"
                )
            for name in WHOLE_SEGMENT_FIELDS:
                if name in names and segment != f"{{{name}}}":
                    raise TraitError(f"{where}: {template!r}: {{{name}}} must be a whole segment")
        if "servername" in used and "username" in used:
            order = [next(n for n in FIELDS if f"{{{n}}}" in seg) for seg in self.segments if "{" in seg]
            if order.index("servername") < order.index("username"):
                raise TraitError(
                    f"{where}: {template!r}: {{username}} must come before {{servername}}, so that one"
                    " user's server can never be named into another user's routes"
                )
        if "{username}" in self.segments[0]:
            raise TraitError(
                f"{where}: {template!r} begins with {{username}}: a user named {', '.join(HUB_PATHS)} would take"
                " over JupyterHub's own paths (/user/<another user>/...); begin with a fixed segment such as /ports/"
            )
        missing = {"port", "username"} - used
        if missing:
            raise TraitError(f"{where}: {template!r} must contain " + " and ".join(f"{{{m}}}" for m in sorted(missing)))
        self.template = template
        self.has_servername = "servername" in used
        self.port_last = self.segments[-1] == "{port}"  # needed for port ranges

    def _parse_host(self, template: str) -> None:
        """``<labels>.{subdomain_host}``, or ``<labels>.<port domain>`` (two or more literal
        labels at the end): each label literal (a-z, 0-9, '-') with fields; ``{port}`` begins
        a label and is followed by ``--`` (the port is read unambiguously, and no such host is
        one of JupyterHub's own); ``{username}`` is a whole label or the rest of the port's;
        ``{servername}`` is a whole label (left out for the default server)."""
        where = self.where
        on_hub_domain = template.endswith(SUBDOMAIN_HOST)
        if "/" in template or "." not in template:
            raise TraitError(
                f"{where}: {template!r} must be a path starting with '/', or a host name ending in"
                " '.{subdomain_host}' or in a domain apart from the hub's (such as"
                " '{port}--{username}.{subdomain_host}' or '{port}--{username}.ports.example-content.org')"
            )
        self.labels = (template[: -len(SUBDOMAIN_HOST)] if on_hub_domain else template).split(".")
        used: list[str] = []
        for label in self.labels:
            names = self._fields(label, template)
            used += names
            literal = re.sub(r"\{[a-z]+\}", "", label)
            if not label or not DNS_LITERAL.fullmatch(literal) or label.startswith("-") or label.endswith("-"):
                raise TraitError(
                    f"{where}: {template!r}: label {label!r} must be a-z, 0-9 and '-' (not at either end) besides its fields"
                )
            if "servername" in names and label != "{servername}":
                raise TraitError(f"{where}: {template!r}: {{servername}} must be a whole label")
            if "port" in names and not label.startswith("{port}--"):
                raise TraitError(
                    f"{where}: {template!r}: {{port}} must begin a label and be followed by '--', as in '{{port}}--{{username}}'"
                )
            if (
                "username" in names
                and label != "{username}"
                and not (label.startswith("{port}--") and label.endswith("{username}"))
            ):
                raise TraitError(f"{where}: {template!r}: {{username}} must be a whole label or end the label of {{port}}")
            longest = len(literal) + sum(LONGEST_VALUE[name] for name in names)
            if longest > 63:
                raise TraitError(f"{where}: {template!r}: label {label!r} can be {longest} characters long (DNS allows 63)")
        if len(used) != len(set(used)):
            raise TraitError(f"{where}: {template!r}: each field may appear once")
        missing = {"port", "username"} - set(used)
        if missing:
            raise TraitError(f"{where}: {template!r} must contain " + " and ".join(f"{{{m}}}" for m in sorted(missing)))
        if not on_hub_domain:  # the literal labels at the end: the domain every port host ends in
            fixed = list(itertools.takewhile(lambda label: "{" not in label, reversed(self.labels)))[::-1]
            if len(fixed) < 2:
                raise TraitError(
                    f"{where}: {template!r} must end in '.{{subdomain_host}}' or in a domain of two labels or more,"
                    " apart from the hub's (such as '.ports.example-content.org')"
                )
            self.port_domain = ".".join(fixed)
        self.template = template
        self.has_servername = "servername" in used
        self.port_last = False

    def _fields(self, segment: str, template: str) -> set[str]:
        try:
            parsed = list(string.Formatter().parse(segment))
        except ValueError as e:
            raise TraitError(f"{self.where}: {template!r}: {e}") from None
        names = {name for _, name, spec, conv in parsed if name is not None}
        unknown = names - FIELDS
        if unknown or "" in names:
            raise TraitError(
                f"{self.where}: {template!r}: unknown field(s) "
                f"{sorted(unknown) or ['{}']}; allowed: {{username}}, {{servername}}, {{port}}"
            )
        return names

    def serves(self, username: str, servername: str) -> bool:
        """Whether this server gets routes: named servers need ``{servername}``; a name that
        would be a ``.`` or ``..`` segment gets none (a proxy resolves those, so such a route
        would land outside its prefix), nor a server named like a port (``5000``), whose
        routes the default server's would be confused with."""
        if username in DOT_NAMES or servername in DOT_NAMES or servername.isdigit():
            return False
        return not servername or self.has_servername

    @property
    def on_hub_domain(self) -> bool:
        """Whether ports get hosts below the hub's own domain (``{subdomain_host}``)."""
        return self.by_host and not self.port_domain

    def hub_problem(self, subdomain_host: str, subdomain_hook) -> str:
        """Why this template cannot work on a hub with these settings ("" if it can): a host
        template needs ``subdomain_host`` (CHP routes by host only then); on the hub's domain,
        JupyterHub's default ``subdomain_hook``; a port domain of its own must lie apart from
        the hub's domain."""
        if not self.by_host:
            return ""
        where = f"{self.where} {self.template!r} is a host template"
        if not subdomain_host:
            return f"{where}: it needs c.JupyterHub.subdomain_host (the proxy routes by host only then)"
        if self.port_domain:
            return self._port_domain_problem(where, urlsplit(subdomain_host).hostname or "")
        if subdomain_hook is not subdomain_hook_idna:
            return (
                f"{where}: it needs JupyterHub's default subdomain_hook ('idna'); with another, a user's"
                " own host could be a port's (a user named 5000--alice)"
            )
        return ""

    def _port_domain_problem(self, where: str, hub_domain: str) -> str:
        """Why the port domain cannot be used beside a hub on ``hub_domain`` ("" if it can)."""
        ours, hubs = self.port_domain, hub_domain.lower()
        if ours == hubs or hubs.endswith("." + ours):
            relation = "the hub's own domain" if ours == hubs else f"a parent of the hub's domain ({hubs})"
            return (
                f"{where}: {ours!r} is {relation}, so a port's page could set cookies that the hub"
                " receives (its own hub login, a cookie bomb): use a domain apart from the hub's"
            )
        if ours.endswith("." + hubs):
            return (
                f"{where}: {ours!r} lies below the hub's domain ({hubs}): write it with"
                " '{subdomain_host}', or use a domain apart from the hub's"
            )
        return ""

    def ranges_problem(self) -> str:
        """Why port ranges cannot use this template ("" if they can): their one route per
        server is the template without its last segment, so that segment must be ``{port}``,
        and the path must not begin with one of JupyterHub's own segments, which the route
        would take over (no template begins with ``{username}``: see ``__init__``)."""
        if self.by_host:
            return f"a path template: CHP cannot route every port of a host ({self.template!r}) to one place"
        if not self.port_last:
            return f"{{port}} as the last segment of c.PortRoutes.route_template ({self.template!r} has not)"
        first = self.segments[0]
        if first in HUB_PATHS:
            return f"a route template that begins with a fixed segment other than {', '.join(HUB_PATHS)}, such as /ports/ ({self.template!r} does not)"
        return ""

    def render_prefix(self, username: str, servername: str) -> str:
        """The routespec of a server's port ranges: the template without its last segment,
        ``{port}`` (a proxy route there sends every port of the server to the sidecar)."""
        assert self.port_last, "port ranges need {port} as the template's last segment"
        return self.render(username, servername, 0)[: -len("0/")]

    def render(self, username: str, servername: str, port: int) -> str:
        """The routespec of one port of one server: a path (escaped, leading and trailing
        ``/``), or for a host template ``<host>/``."""
        if self.by_host:
            return self._render_host(username, servername, port)
        if username in DOT_NAMES or servername in DOT_NAMES:
            raise ValueError(f"{username!r}/{servername!r}: a '.' or '..' name cannot be a route segment")
        values = {
            "username": escape_segment(username),
            "servername": escape_segment(servername),
            "port": str(int(port)),
        }
        parts = [segment.format(**values) for segment in self.segments if not (segment == "{servername}" and not servername)]
        return "/" + "/".join(parts) + "/"

    def _render_host(self, username: str, servername: str, port: int) -> str:
        if self.on_hub_domain and not self.domain:
            raise ValueError(f"{self.where}: {self.template!r} is a host template: it needs c.JupyterHub.subdomain_host")
        values = {
            "username": dns_label(username, USERNAME_LABEL_LENGTH),
            "servername": dns_label(servername),
            "port": str(int(port)),
        }
        labels = [label.format(**values) for label in self.labels if not (label == "{servername}" and not servername)]
        return ".".join([*labels, *([self.domain] if self.on_hub_domain else [])]) + "/"
