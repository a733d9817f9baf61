"""Our port routes as a Traefik dynamic configuration file of their own, beside the hub's.

Traefik's file provider, watching a directory (``providers.file.directory``, as The Littlest
JupyterHub's static config has it), merges every ``.toml``/``.yaml``/``.yml`` file there:
jupyterhub-traefik-proxy's ``dynamic_config_file`` (the hub's routes) and ours,
``jhproxy-routes.toml``. So the hub's file stays as small as the hub's own routes, and ours
is written without the hub's. The file holds, in TOML:

- ``[jhproxy_routes.routes]``: one line per route, ``"<routespec>" = "<JSON of its data and
  target>"``, what is read back when the hub starts again (Traefik ignores the key);
- per route the router and the service jupyterhub-traefik-proxy would write for it (its
  ``_dynamic_config_for_route``: the same names, rule and options).

Each route's lines are made once, when it is added (``RouteLines``); a write joins them.
``write`` is meant for a thread: it writes a temporary file in ``.jhproxy-routes/`` (a
folder Traefik does not watch, and a name it does not load) and renames it over the file,
so Traefik and a hub starting again only ever see a whole file, even if the process dies in
the middle of a write; the temporary file is synced to disk before the rename.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import NamedTuple

ROUTES_FILE = "jhproxy-routes.toml"
TEMP_DIR = ".jhproxy-routes"  # temporary files: inside the watched folder, not watched themselves
HEADER = "# The port routes of jhproxy-routes, written by the hub as a whole (edits are lost).\n"
TABLE = "[jhproxy_routes.routes]\n"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DECODER = json.JSONDecoder()


def routes_path(dynamic_config_file: str) -> str:
    """Our file, beside the hub's ``dynamic_config_file``."""
    return os.path.join(os.path.dirname(os.path.abspath(dynamic_config_file)), ROUTES_FILE)


def toml_string(value: str) -> str:
    """A TOML basic string that is also a JSON string (control characters escaped, DEL too,
    other characters as they are)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML value for {type(value).__name__}")


def toml_tables(path: str, table: dict) -> str:
    """``table`` under ``[path]``: values first, then nested tables and arrays of tables (of
    values), as Traefik's router and service configurations are made."""
    values, nested = [], []
    for key, value in table.items():
        name = f"{path}.{toml_key(key)}"
        if isinstance(value, dict):
            nested.append(toml_tables(name, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            nested += [f"[[{name}]]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in item.items()) for item in value]
        else:
            values.append(f"{toml_key(key)} = {toml_value(value)}\n")
    return (f"[{path}]\n" + "".join(values) if values else "") + "".join(nested)


class RouteLines(NamedTuple):
    """One route in the file: its line in ``[jhproxy_routes.routes]``, and its router and service."""

    entry: str
    tables: str


def route_lines(routespec: str, data: dict, traefik: dict) -> RouteLines:
    """The file's lines for a route; ``data`` has its ``target``, ``traefik`` is what
    jupyterhub-traefik-proxy's ``_dynamic_config_for_route`` makes of it."""
    entry = f"{toml_string(routespec)} = {toml_string(json.dumps(data, separators=(',', ':')))}\n"
    return RouteLines(entry, toml_tables("http", traefik["http"]))


def render(routes: list[RouteLines]) -> str:
    return HEADER + TABLE + "".join(r.entry for r in routes) + "".join(r.tables for r in routes)


def parse_routes(text: str) -> dict[str, dict]:
    """``{routespec: data}`` from a file ``render`` made (ValueError if it is not one)."""
    if not text.startswith(HEADER + TABLE):
        raise ValueError("not a file written by jhproxy-routes")
    routes = {}
    start = len(HEADER + TABLE)
    end = text.find("\n[", start - 1)  # the routers and services (a route's line has no raw newline)
    for line in text[start : None if end < 0 else end + 1].splitlines():
        spec, i = _DECODER.raw_decode(line)
        if line[i : i + 3] != " = ":
            raise ValueError(f"expected ' = ' after {spec!r}")
        data = json.loads(json.loads(line[i + 3 :]))
        if not isinstance(spec, str) or not isinstance(data, dict) or "target" not in data:
            raise ValueError(f"not a route: {line[:200]!r}")
        routes[spec] = data
    return routes


def remove_leftovers(path: str) -> None:
    """Temporary files of writes that never finished (the process died), before the first write."""
    temp_dir = os.path.join(os.path.dirname(path), TEMP_DIR)
    if os.path.isdir(temp_dir):
        for name in os.listdir(temp_dir):
            if name.startswith(os.path.basename(path) + ".") and name.endswith(".tmp"):
                os.unlink(os.path.join(temp_dir, name))


def read(path: str) -> dict[str, dict]:
    """The routes in the file at ``path``; none if there is no file."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_routes(f.read())
    except FileNotFoundError:
        return {}


def write(path: str, routes: list[RouteLines]) -> None:
    """Replace the file at ``path`` with ``routes`` at once (see the module)."""
    text = render(routes)
    temp_dir = os.path.join(os.path.dirname(path), TEMP_DIR)
    os.makedirs(temp_dir, mode=0o700, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=temp_dir)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def remove(path: str) -> None:
    """The file and its temporary folder gone (a hub that started Traefik, stopping)."""
    for name in (path, os.path.join(os.path.dirname(path), TEMP_DIR)):
        try:
            os.rmdir(name) if os.path.isdir(name) else os.unlink(name)
        except OSError:
            pass
