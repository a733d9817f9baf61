"""When each server's ports last let a request through, for the hub to collect.

The sidecar notes the time of every request it lets through (and of every websocket
message) per server, never per request towards the hub: the hub asks every
``last_activity_interval`` with ``GET /_jhproxy-routes/api/activity?since=<now of its last
answer>`` and writes what it got into its database (``jhproxy_routes/activity.py``). Asking
with an answer's ``now`` acknowledges it: what that answer held is dropped, what came after
is kept. An answer lost on the way is therefore asked for again, and nothing is lost.
Refused requests are never noted.
"""

from __future__ import annotations

import time


class ServerActivity:
    def __init__(self):
        self.last: dict[tuple[str, str], float] = {}  # (user, server) -> time.time() of its last request
        # the first activity not yet in an answer: its age is how far the hub is behind
        self.unanswered_since: float | None = None

    def seen(self, server: tuple[str, str]) -> None:
        now = time.time()
        self.last[server] = now
        if self.unanswered_since is None:
            self.unanswered_since = now

    def answer(self, since: float) -> dict:
        """Activity at or after ``since`` (the ``now`` of an earlier answer, which the hub
        has stored): ``{"now": ..., "servers": [[user, server, time], ...]}``. Older entries
        were in that answer and are dropped."""
        now = time.time()
        self.last = {server: t for server, t in self.last.items() if t >= since}
        self.unanswered_since = None
        return {"now": now, "servers": [[user, server, t] for (user, server), t in self.last.items()]}

    def pending_seconds(self) -> float:
        """Age of the oldest activity the hub has not been sent yet (0: none)."""
        since = self.unanswered_since
        return time.time() - since if since is not None else 0.0
