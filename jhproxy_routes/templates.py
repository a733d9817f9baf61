"""Route templates: where a port of a server appears in the proxy's URL space.

A template is a path such as ``/ports/{username}/{servername}/{port}/``. It renders to a
*routespec* in JupyterHub's sense: an escaped path that starts and ends with ``/``.
"""

from __future__ import annotations

import string
from urllib.parse import quote

from traitlets import TraitError

FIELDS = {"username", "servername", "port"}
WHOLE_SEGMENT_FIELDS = ("username", "servername")
DOT_NAMES = (".", "..")
HUB_PATHS = ("hub", "user", "services")  # JupyterHub's own, below base_url


def escape_segment(value: str) -> str:
    """Escape a name for one path segment, as JupyterHub's ``url_escape_path`` does."""
    return quote(value, safe="@~")


class RouteTemplate:
    """A validated route template; ``render`` gives the routespec of one server's port."""

    def __init__(self, template: str, where: str = "c.PortRoutes.route_template"):
        self.where = where
        if not template.startswith("/"):
            raise TraitError(f"{where}: {template!r} must start with '/'")
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
                if name in names and segment != "{%s}" % name:
                    raise TraitError(f"{where}: {template!r}: {{{name}}} must be a whole segment")
        if "servername" in used and "username" in used:
            order = [next(n for n in FIELDS if "{%s}" % n in seg) for seg in self.segments if "{" in seg]
            if order.index("servername") < order.index("username"):
                raise TraitError(
                    f"{where}: {template!r}: {{username}} must come before {{servername}}, so that one"
                    " user's server can never be named into another user's routes"
                )
        missing = {"port", "username"} - used
        if missing:
            raise TraitError(
                f"{where}: {template!r} must contain " + " and ".join(f"{{{m}}}" for m in sorted(missing))
            )
        self.template = template
        self.has_servername = "servername" in used
        self.port_last = self.segments[-1] == "{port}"  # needed for port ranges

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

    def ranges_problem(self) -> str:
        """Why port ranges cannot use this template ("" if they can): their one route per
        server is the template without its last segment, so that segment must be ``{port}``,
        and the path must begin with a segment of its own (not one of JupyterHub's, which the
        route would take over for a user of that name)."""
        if not self.port_last:
            return f"{{port}} as the last segment of c.PortRoutes.route_template ({self.template!r} has not)"
        first = self.segments[0]
        if "{" in first or first in HUB_PATHS:
            return f"a route template that begins with a fixed segment other than {', '.join(HUB_PATHS)}, such as /ports/ ({self.template!r} does not)"
        return ""

    def render_prefix(self, username: str, servername: str) -> str:
        """The routespec of a server's port ranges: the template without its last segment,
        ``{port}`` (a proxy route there sends every port of the server to the sidecar)."""
        assert self.port_last, "port ranges need {port} as the template's last segment"
        return self.render(username, servername, 0)[: -len("0/")]

    def render(self, username: str, servername: str, port: int) -> str:
        """The routespec (escaped, leading and trailing ``/``) of one port of one server."""
        if username in DOT_NAMES or servername in DOT_NAMES:
            raise ValueError(f"{username!r}/{servername!r}: a '.' or '..' name cannot be a route segment")
        values = {
            "username": escape_segment(username),
            "servername": escape_segment(servername),
            "port": str(int(port)),
        }
        parts = [
            segment.format(**values)
            for segment in self.segments
            if not (segment == "{servername}" and not servername)
        ]
        return "/" + "/".join(parts) + "/"
