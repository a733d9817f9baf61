"""Traffic on a server's ports as that server's activity in the hub (for the idle culler).

JupyterHub learns activity from its own routes in the proxy and from the single-user servers'
reports; port routes are neither. So every ``last_activity_interval``, right after the hub's
own update (which ends in ``check_routes``), the collector gathers the newest activity of
each server's ports:

- public ports on a direct route: the proxy's ``last_activity`` of the route (CHP moves it
  for answers under 300 and for every websocket message; Traefik keeps none, so on Traefik
  no route is direct and public ports go through the sidecar too);
- every other port: the sidecar's own record, which holds only requests it let through and
  websocket messages (``sidecar/activity.py``); the proxy's time of such a route would count
  refused requests too, and is never read.

It then moves each server's and its user's ``last_activity`` forward (never back) in the hub's
database, as ``JupyterHub.update_last_activity`` does for ``/user/`` routes (fifty servers
per commit, the loop free in between). Ports with ``activity`` False are left out. One hub
request per port request is never made: the sidecar aggregates per server between two
collections.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime, timezone

from dateutil.parser import isoparse
from sqlalchemy.exc import SQLAlchemyError

from .metrics import ACTIVITY_PENDING, ACTIVITY_UPDATES
from .routeapi import ENTRIES_PER_YIELD, RouteAPIError

SERVERS_PER_YIELD = 500  # servers looked at between two yields to the hub's event loop
SERVERS_PER_COMMIT = 50  # servers moved forward per commit: each commit blocks the hub's loop


def naive_utc(t: float) -> datetime:
    """A Unix time as JupyterHub stores times: naive UTC."""
    return datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None)


class ActivityCollector:
    def __init__(self, manager, db_factory, log: logging.Logger):
        """``manager``: the RouteManager (its proxy and sidecar APIs, its settings);
        ``db_factory()``: the hub's database session."""
        self.manager = manager
        self.db_factory = db_factory
        self.log = log
        self._since: dict[str, float] = {}  # sidecar replica API URL -> now of its last answer (its clock)
        self._proxy_stamps: dict[str, str] = {}  # direct routespec -> its last_activity at the last collection
        self._new_proxy_stamps: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._complete_at = time.monotonic()  # the start of the last collection that reached every source
        ACTIVITY_PENDING.set_function(lambda: time.monotonic() - self._complete_at)
        specs = manager.settings
        # without direct routes (Traefik) every port's activity is the sidecar's
        direct = manager.direct_routes and specs.direct_public_routes
        self._direct_ports = {s.port for s in manager.single_ports if specs.counts_activity(s)} if direct else set()

    @property
    def collecting(self) -> bool:
        return self._lock.locked()

    async def collect(self, users) -> None:
        """Write the activity seen since the last collection into the hub's database."""
        async with self._lock:
            started = time.monotonic()
            seen: dict[tuple[str, str], tuple[float, str]] = {}  # (user, server) -> (Unix time, source)
            complete = await self._from_proxy(seen)
            replicas = await self.manager.sidecar.replicas()
            answers = await self.manager.sidecar.each(
                replicas, lambda api: api.activity(self._since.get(api.api_url, 0.0)), "activity collection"
            )
            complete = complete and len(answers) == len(replicas)
            for answer in answers.values():
                self._from_sidecar(seen, answer)
            if seen and not await self._write(users, seen):
                return  # not stored: the sidecars keep theirs until the next collection acknowledges it
            self._proxy_stamps = self._new_proxy_stamps
            for api, answer in answers.items():
                self._since[api.api_url] = answer["now"]
            if complete:
                self._complete_at = started

    async def _from_proxy(self, seen: dict) -> bool:
        """Direct routes' times from the proxy's table; False if it could not be read."""
        if not self._direct_ports:
            return True
        try:
            routes = await self.manager.proxy_table.get_all()
        except RouteAPIError as e:
            self.log.error("jhproxy-routes: port activity: the proxy's routes could not be read: %s", e)
            return False
        sidecar_url = self.manager.settings.sidecar_url
        stamps = {}
        for count, (spec, data) in enumerate(routes.items(), 1):
            if count % ENTRIES_PER_YIELD == 0:
                await asyncio.sleep(0)
            stamp = data.get("last_activity")
            if data.get("target") == sidecar_url or data.get("port") not in self._direct_ports or not isinstance(stamp, str):
                continue
            stamps[spec] = stamp
            if self._proxy_stamps.get(spec) == stamp:
                continue  # no request since the last collection
            try:
                t = isoparse(stamp).timestamp()
            except (ValueError, OverflowError):
                continue
            note(seen, (data.get("username"), data.get("servername", "")), t, "proxy")
        self._new_proxy_stamps = stamps  # kept once written
        return True

    @staticmethod
    def _from_sidecar(seen: dict, answer: dict) -> None:
        """A replica's answer, its times moved to the hub's clock (replicas may run elsewhere);
        never later than now, and entries that are not [user, server, finite time] skipped."""
        now = time.time()
        offset = now - answer["now"]
        for entry in answer["servers"]:
            if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], (int, float)) and math.isfinite(entry[2]):
                note(seen, (entry[0], entry[1]), min(entry[2] + offset, now), "sidecar")

    async def _write(self, users, seen: dict) -> bool:
        """Move ``last_activity`` of those servers and their users forward, a few servers per
        commit (one commit for thousands would hold up the hub's loop for a second)."""
        by_name = {user.name: user for user in list(users.values())}
        db = self.db_factory()
        updated = {"proxy": 0, "sidecar": 0}
        pending = 0  # servers changed since the last commit
        for count, ((name, servername), (t, source)) in enumerate(seen.items(), 1):
            user = by_name.get(name)
            spawner = user.orm_user.orm_spawners.get(servername) if user is not None else None
            when = naive_utc(t)
            if spawner is not None and (spawner.last_activity is None or when > spawner.last_activity):
                spawner.last_activity = when
                if user.orm_user.last_activity is None or when > user.orm_user.last_activity:
                    user.orm_user.last_activity = when
                updated[source] += 1
                pending += 1
            if pending >= SERVERS_PER_COMMIT or (pending and count == len(seen)):
                if not self._commit(db):
                    return False
                pending = 0
                await asyncio.sleep(0)
            elif count % SERVERS_PER_YIELD == 0:
                await asyncio.sleep(0)
        for source, servers in updated.items():
            ACTIVITY_UPDATES.labels(source).inc(servers)
        return True

    def _commit(self, db) -> bool:
        try:
            db.commit()
        except SQLAlchemyError as e:
            db.rollback()
            self.log.error("jhproxy-routes: port activity not stored, kept for the next collection: %s", e)
            return False
        return True


def note(seen: dict, server: tuple, t: float, source: str) -> None:
    """Keep the newest time of each server."""
    if isinstance(server[0], str) and isinstance(server[1], str) and (server not in seen or t > seen[server][0]):
        seen[server] = (t, source)
