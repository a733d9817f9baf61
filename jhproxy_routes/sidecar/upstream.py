"""Keep-alive connections to the apps, pooled per address.

CHP pools its connections to the sidecar across clients; the sidecar does the same towards
the apps, so a small request costs no new TCP connection. A pooled connection is used only
for one request at a time and dropped when the app closed it or it idled too long.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from ..http1 import MAX_HEAD


class Connection:
    __slots__ = ("idle_since", "reader", "reused", "writer")

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.reused = False

    def close(self) -> None:
        self.writer.close()

    def idle_clean(self) -> bool:
        """Nothing unread and still open: safe to hand to the next request."""
        return not self.reader.at_eof() and not self.writer.is_closing() and not len(getattr(self.reader, "_buffer", b""))


class UpstreamPool:
    def __init__(self, connect_timeout: float = 10, idle_timeout: float = 4, max_idle: int = 64):
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.idle: dict[tuple[str, int], list[Connection]] = defaultdict(list)

    async def connect(self, host: str, port: int) -> Connection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=MAX_HEAD), self.connect_timeout)
        return Connection(reader, writer)

    async def acquire(self, host: str, port: int) -> Connection:
        """An idle pooled connection that still looks open, or a new one."""
        idle = self.idle.get((host, port))
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.idle_timeout and not conn.reader.at_eof() and not conn.writer.is_closing():
                conn.reused = True
                return conn
            conn.close()
        return await self.connect(host, port)

    def release(self, host: str, port: int, conn: Connection) -> None:
        idle = self.idle[(host, port)]
        if len(idle) >= self.max_idle or conn.writer.is_closing():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def close_all(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
