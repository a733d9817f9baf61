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
