"""A lean httpx transport: HTTP/1.1 over asyncio streams, with keep-alive connections.

The route APIs take one small JSON request per route: 20,000 of them for a hub that starts
with 10,000 running servers. httpx's default transport (httpcore's pool on anyio) costs about
1.8 ms of CPU per request on such a hub; this one, with the sidecar's strict HTTP/1.1 parser,
a tenth of that, so the route API is the limit again and not the hub's loop. The httpx client
in front stays the same. Bodies are read whole: this is for small API calls, not streaming.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict

import httpx

from .http1 import COPY_SIZE, MAX_HEAD, ChunkedBody, HTTPError, parse_response_head, response_body_framing

FRAMING = (b"transfer-encoding", b"content-length")


class _Connection:
    __slots__ = ("reader", "reused", "writer")

    def __init__(self, reader, writer):
        self.reader, self.writer, self.reused = reader, writer, False


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """Idle connections are kept per (scheme, host, port) and used one request at a time; a
    request that finds its kept connection closed by the server is sent once more on a new one."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self.ssl_context = ssl_context
        self.idle: dict[tuple[str, str, int], list[_Connection]] = defaultdict(list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeout = request.extensions.get("timeout", {})
        body = await request.aread()
        head = b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path) + b"".join(
            b"%s: %s\r\n" % (k, v) for k, v in request.headers.raw if k.lower() not in FRAMING
        )
        head += b"Content-Length: %d\r\n\r\n" % len(body) if body or request.method in ("POST", "PUT", "PATCH") else b"\r\n"
        for attempt in (1, 2):
            conn = await self._acquire(key, timeout.get("connect"), reuse=attempt == 1)
            try:
                status, headers, content, reusable = await asyncio.wait_for(
                    self._exchange(conn, head + body, request.method), timeout.get("read")
                )
            except asyncio.TimeoutError:  # before OSError, of which it is a subclass
                conn.writer.close()
                raise httpx.ReadTimeout("no answer in time", request=request) from None
            except (OSError, asyncio.IncompleteReadError) as e:  # OSError: also ssl.SSLError
                conn.writer.close()
                if attempt == 1 and conn.reused:
                    # the server had closed the kept connection: once more, on a new one (the
                    # route API's requests may be repeated: a route set or deleted twice is the same)
                    continue
                raise httpx.RemoteProtocolError(f"connection closed: {e or type(e).__name__}", request=request) from None
            except (HTTPError, asyncio.LimitOverrunError) as e:
                conn.writer.close()
                raise httpx.RemoteProtocolError(f"malformed response: {e}", request=request) from None
            except BaseException:
                conn.writer.close()
                raise
            if reusable:
                conn.reused = True
                self.idle[key].append(conn)
            else:
                conn.writer.close()
            return httpx.Response(status, headers=headers, content=content, extensions={"http_version": b"HTTP/1.1"})
        raise AssertionError("unreachable")

    async def _acquire(self, key, connect_timeout, reuse: bool = True) -> _Connection:
        idle = self.idle[key] if reuse else []
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.writer.close()
        scheme, host, port = key
        context = (self.ssl_context or ssl.create_default_context()) if scheme == "https" else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, limit=MAX_HEAD), connect_timeout
            )
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as e:
            raise httpx.ConnectError(f"connecting to {host}:{port}: {e}") from None
        return _Connection(reader, writer)

    @staticmethod
    async def _exchange(conn: _Connection, message: bytes, method: str):
        conn.writer.write(message)
        await conn.writer.drain()
        response = parse_response_head(await conn.reader.readuntil(b"\r\n\r\n"))
        while response.start.status.startswith("1"):  # interim responses: skipped
            response = parse_response_head(await conn.reader.readuntil(b"\r\n\r\n"))
        kind, length = response_body_framing(response, method)
        extra = b""  # what came after the body: the connection is not clean
        if kind == "length":
            content = await conn.reader.readexactly(length)
        elif kind == "chunked":
            body, parts = ChunkedBody(rechunk=False), []
            while not body.done:
                data = await conn.reader.read(COPY_SIZE)
                if not data:
                    raise ConnectionError("connection closed in the middle of a chunked body")
                part, used = body.feed(data)
                parts.append(part)
                extra = data[used:]
            content = b"".join(parts)
        elif kind == "close":
            content = await conn.reader.read()
        else:
            content = b""
        reusable = (
            kind != "close"
            and "close" not in response.tokens("Connection")
            and response.start.version == "HTTP/1.1"
            and not extra
            and not len(getattr(conn.reader, "_buffer", b""))  # nothing unread after the body
        )
        headers = [(k, v) for k, v in response.headers if k.lower() not in ("transfer-encoding", "content-length")]
        return int(response.start.status), headers, content, reusable

    async def aclose(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.writer.close()
        self.idle.clear()
