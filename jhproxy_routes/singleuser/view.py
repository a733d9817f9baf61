"""The Ports panel's view of a server: its listeners (``listeners.py``) put together with the
hub's settings of its allowed ports (``hub.py``), one entry per port.

Every listening port is listed, allowed or not, and every allowed single port, listening or
not. An entry carries the listener's fields (``Listener.as_json``), ``listening``,
``relayed``, ``allowed``, and for an allowed port the hub's fields of the port or range
that covers it (``spec``: its key, ``name``, ``url``, ``access``, ``admits``...; a range's
URL with this port filled in).
"""

from __future__ import annotations

from collections.abc import Callable

from .listeners import Listener

NOT_LISTENING = {"addresses": [], "loopback_only": False, "pid": 0, "process": "", "command": ""}


def covering(settings: dict | None, port: int) -> dict | None:
    """The hub's entry of the allowed port or range that covers ``port``, if any."""
    for spec in (settings or {}).get("ports", []):
        key = spec["port"]
        if isinstance(key, int):
            if key == port:
                return spec
        else:
            first, _, last = str(key).partition("-")
            if first.isdigit() and last.isdigit() and int(first) <= port <= int(last):
                return spec
    return None


def port_entries(
    found: list[Listener], settings: dict | None, relayed: set[int], rebase: Callable[[str], str] = str
) -> list[dict]:
    """The panel's entries, by port; ``rebase`` turns a URL the hub gave into one the
    browser can open (the hub may know itself only by its internal address)."""
    entries: dict[int, dict] = {}
    for listener in found:
        entries[listener.port] = {**listener.as_json(), "listening": True, "relayed": listener.port in relayed}
    for spec in (settings or {}).get("ports", []):
        if isinstance(spec["port"], int) and spec["port"] not in entries:
            entries[spec["port"]] = {"port": spec["port"], **NOT_LISTENING, "listening": False, "relayed": False}
    for port, entry in entries.items():
        spec = covering(settings, port)
        entry["allowed"] = spec is not None
        if spec is None:
            entry["url"] = None
            continue
        hub_fields = {key: value for key, value in spec.items() if key not in ("port", "listening")}
        url = spec.get("url")
        entry.update(hub_fields, spec=str(spec["port"]), url=rebase(url.replace("{port}", str(port))) if url else None)
    return [entries[port] for port in sorted(entries)]
