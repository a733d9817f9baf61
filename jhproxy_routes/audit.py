"""The audit log: one JSON object per line, for the admin to read or ship elsewhere.

The hub records changes of tokens and port access (who, which server, when, from where); the
sidecar records denied requests. Both append to the same file: each line is written whole by
one ``write`` on a file opened with ``O_APPEND``, so lines of the two processes never mix.
Tokens and query strings are never written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone

log = logging.getLogger(__name__)


class AuditLog:
    """Appends events to ``path``; with no path, records nothing."""

    def __init__(self, path: str | None):
        self.path = path or None
        self._fd = None
        if self.path:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def record(self, event: str, **fields) -> None:
        if self._fd is None:
            return
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields}
        try:
            os.write(self._fd, (json.dumps(entry, ensure_ascii=True, default=str) + "\n").encode())
        except OSError as e:  # a full disk must not take the proxy down with it
            log.error("jhproxy-routes: could not write the audit log %s: %s", self.path, e)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class DenialLog:
    """Denied requests into the audit log, at most ``per_minute`` lines per client: a client
    sending refused requests in a loop fills no disk. What is left out is counted, and the
    count is written as ``denials suppressed`` with the client's next line."""

    def __init__(self, audit: AuditLog, per_minute: int = 60, max_clients: int = 10_000):
        self.audit = audit
        self.per_minute = per_minute
        self.max_clients = max_clients
        self._clients: dict[str, list] = {}  # client -> [minute, lines, suppressed]

    def record(self, client: str, **fields) -> None:
        if self.audit.path is None:
            return
        client = client[:100]
        minute = int(time.monotonic() // 60)
        state = self._clients.get(client)
        if state is None or state[0] != minute:
            if len(self._clients) >= self.max_clients:
                self._clients.clear()
            if state is not None and state[2]:
                self.audit.record("denials suppressed", client=client, count=state[2])
            state = self._clients[client] = [minute, 0, 0]
        if state[1] >= self.per_minute:
            state[2] += 1
            return
        state[1] += 1
        self.audit.record("denied", client=client, **fields)
