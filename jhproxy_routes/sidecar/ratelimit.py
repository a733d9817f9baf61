"""Bad-token rate limiting: after ``limit`` wrong tokens from one client for one server's
token (whichever of its ports) within ``window`` seconds, that client's wrong tokens there get
429 until the window has passed. The right token is checked first and always gets in: many
clients can share one address (a NAT, a balancer), and one guessing must not lock the others
out. Memory is bounded: the oldest entries are dropped beyond ``max_entries``.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque


class BadTokenLimiter:
    def __init__(self, limit: int = 10, window: float = 60, max_entries: int = 10_000):
        self.limit = limit
        self.window = window
        self.max_entries = max_entries
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is not None:
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if not failures:
                del self._failures[key]
                return None
        return failures

    def retry_after(self, client: str, key: str) -> int:
        """Seconds until this client may try a token for ``key`` again; 0: now."""
        if not self.limit:
            return 0
        now = time.monotonic()
        failures = self._recent((client, key), now)
        if failures is None or len(failures) < self.limit:
            return 0
        return max(1, round(failures[-self.limit] + self.window - now))

    def failed(self, client: str, key: str) -> bool:
        """Count a wrong token; True when this one reached the limit."""
        if not self.limit:
            return False
        key, now = (client, key), time.monotonic()
        failures = self._recent(key, now)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self.limit)
            if len(self._failures) > self.max_entries:
                self._failures.popitem(last=False)
        self._failures.move_to_end(key)
        failures.append(now)
        return len(failures) == self.limit
