"""Open answers let in by a hub login, checked again while they stay open.

A request is checked once; a websocket, or an answer streamed for long (server-sent events,
a download), lives on. One let in by the visitor's hub login (``login.py``) is asked about
again every ``login_cache_max_age`` seconds, as a new request would be, and closed when the
login no longer gets in: the visitor logged out of the hub or was deleted (the hub revoked
the session's token), left the port's group, or lost the share of its server. (Those let in
by the port token end when it expires or changes: ``relay.py``, ``server.py``.)

The hub is asked once per session token per check, however many open answers that session
holds: the answers come through ``HubLogin``'s caches, which the first of a session fills for
the others. While the hub cannot be asked (restarting, say), they stay open and the next
check asks again.
"""

from __future__ import annotations

import asyncio
import logging

from ..http1 import HTTPError
from ..logsafe import shown

log = logging.getLogger("jhproxy_routes.sidecar")

MIN_INTERVAL = 1.0  # seconds between checks, whatever the cache's age
CONCURRENCY = 8  # sessions asked about at once


class LoginRecheck:
    """The open answers of hub logins (``Relay`` -> its session's token), checked again
    every ``interval`` seconds by ``run``."""

    def __init__(self, login, interval: float):
        self.login = login
        self.interval = max(MIN_INTERVAL, interval)
        self.open: dict = {}

    def add(self, relay, token: str) -> None:
        self.open[relay] = token

    def discard(self, relay) -> None:
        self.open.pop(relay, None)

    async def run(self) -> None:
        """Check every ``interval`` seconds, for as long as the sidecar runs."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # the next check must come whatever went wrong in this one
                log.exception("checking the open answers of hub logins failed")

    async def check(self) -> int:
        """Close every open answer whose login no longer gets into its route; how many."""
        sessions: dict[str, list] = {}
        for relay, token in self.open.items():
            sessions.setdefault(token, []).append(relay)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def check_session(token: str, relays: list) -> int:
            async with limit:
                closed = 0
                for relay in relays:  # one after the other: the first fills the caches
                    if relay in self.open and not await self._still_admitted(relay, token):
                        log.info(
                            "closing an open answer on %s: the login that let it in no longer gets in", shown(relay.route.key)
                        )
                        self.discard(relay)
                        relay.close()
                        closed += 1
                return closed

        return sum(await asyncio.gather(*(check_session(t, r) for t, r in sessions.items())))

    async def _still_admitted(self, relay, token: str) -> bool:
        try:
            return await self.login.admits_token(relay.route, token)
        except HTTPError as e:  # the hub cannot be asked now: keep it until it can
            log.warning("an open answer's login could not be checked again (%s); it stays open until the next check", e.message)
            return True
