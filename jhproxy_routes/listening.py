"""What listens on the allowed ports of each server, as its in-server part reports it
(``POST /hub/api/jhproxy-routes/listening/<server>``, ``singleuser/watcher.py``), for the
home page, the ports page and the JupyterLab panel: "listening: streamlit" or "nothing
listening" beside each port. Kept in the hub's memory only: a report is news, not state.

A server's part reports at once when what listens changes, and every ``REPORT_INTERVAL``
seconds besides; a report older than ``REPORT_MAX_AGE``, or from before the server's
latest start, tells nothing (the part stopped, or is not installed): the port's listening
state is then unknown (None), never "nothing listening".
"""

from __future__ import annotations

import time
from datetime import timezone

REPORT_INTERVAL = 30  # seconds between reports of an unchanged server
REPORT_MAX_AGE = 3 * REPORT_INTERVAL
MAX_PORTS = 1000  # ports in one report: more is not a server's report
MAX_WORDS = 200  # characters of a process name kept
MAX_BODY = 512 << 10  # bytes of a report's body: MAX_PORTS entries with names fit, with room


class ReportError(ValueError):
    """A report that is not one (its text says what is wrong)."""


def parsed_report(body) -> dict[int, dict]:
    """``{"ports": [{"port": 8501, "process": "streamlit", "loopback_only": false,
    "relayed": false}, ...]}`` as ``{port: entry}``, checked (raises ReportError)."""
    if not isinstance(body, dict) or set(body) != {"ports"} or not isinstance(body["ports"], list):
        raise ReportError('A report is {"ports": [{"port": 8501, "process": "...", "loopback_only": false, "relayed": false}]}.')
    if len(body["ports"]) > MAX_PORTS:
        raise ReportError(f"A report names at most {MAX_PORTS} ports.")
    ports: dict[int, dict] = {}
    for entry in body["ports"]:
        port = entry.get("port") if isinstance(entry, dict) else None
        if type(port) is not int or not 1 <= port <= 65535:
            raise ReportError("Each entry needs a port number from 1 to 65535.")
        process = entry.get("process", "")
        if not isinstance(process, str):
            raise ReportError(f"Port {port}: process must be text.")
        ports[port] = {
            "port": port,
            "process": process[:MAX_WORDS],
            "loopback_only": entry.get("loopback_only") is True,
            "relayed": entry.get("relayed") is True,
        }
    return ports


class ListeningReports:
    """The latest report of each server, by (user name, server name)."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._reports: dict[tuple[str, str], tuple[float, dict[int, dict]]] = {}

    def put(self, username: str, servername: str, ports: dict[int, dict]) -> None:
        self._reports[username, servername] = (self._clock(), ports)

    def forget(self, username: str, servername: str) -> None:
        self._reports.pop((username, servername), None)

    def current(self, username: str, servername: str, started: float | None) -> dict[int, dict] | None:
        """The server's listening ports as last reported, or None where no report of its
        current run is fresh (``started``: when the server last started, epoch seconds)."""
        found = self._reports.get((username, servername))
        if found is None:
            return None
        at, ports = found
        if self._clock() - at > REPORT_MAX_AGE or (started is not None and at < started):
            return None
        return ports


def started_at(spawner) -> float | None:
    """When the server last started (epoch seconds), if the hub recorded it."""
    started = spawner.orm_spawner.started
    return started.replace(tzinfo=timezone.utc).timestamp() if started else None
