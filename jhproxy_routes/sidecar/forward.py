"""Relaying between client and app: what of an app's answer reaches the client
(``response_headers`` under a request's ``ResponseRules``, cookies kept below a path
route's prefix by ``scoped_cookie``) and the byte pipe of a websocket (``pipe_both``).
``server.py`` opens the connections and streams the bodies.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from .access import protected_cookie


class ResponseRules(NamedTuple):
    """What an app's answer to one request loses (``drop``: lower-case header names) and gets
    of the sidecar's own (``add``)."""

    drop: frozenset
    add: list
    cookie_path: str | None = None  # the route's path: the app's cookies are put below it
    strip_prefix: bool = False  # the app's cookie paths are below the stripped prefix


def response_headers(response, own: ResponseRules) -> list[tuple[str, str]]:
    """The app's response headers as they may reach the client: no hop-by-hop or framing
    headers (nor any its Connection names), no cookie of the hub's or the sidecar's, and
    the sidecar's own in place of those ``own`` replaces. For every answer, a 101 too."""
    connection = response.tokens("Connection")
    drop = own.drop | connection if connection else own.drop
    headers = []
    for k, v in response.headers:
        lower = k.lower()
        if lower in drop:
            continue
        if lower == "set-cookie":
            if protected_cookie(v.split("=", 1)[0].strip()):
                continue
            if own.cookie_path is not None:
                v = scoped_cookie(v, own.cookie_path, own.strip_prefix)
        headers.append((k, v))
    return headers + own.add


def scoped_cookie(value: str, prefix: str, strip_prefix: bool = False) -> str:
    """A ``Set-Cookie`` value kept on a path route, as nginx's ``proxy_cookie_path`` does:
    its ``Path`` below ``prefix`` (the route's path, no trailing slash; a path already below
    it is kept; with ``strip_prefix`` the app's path is put below it), and no ``Domain``
    (which would send it to sibling hosts). A browser then sends it to this port only."""
    name_value, *attributes = value.split(";")
    path = None
    kept = []
    for attribute in attributes:
        key = attribute.split("=", 1)[0].strip().lower()
        if key == "path":
            path = attribute.split("=", 1)[1].strip() if "=" in attribute else ""
        elif key != "domain":
            kept.append(attribute.strip())
    if path and path.startswith("/") and strip_prefix:
        path = prefix + path.rstrip("/") if path != "/" else prefix
    elif not (path and (path == prefix or path.startswith(prefix + "/"))):
        path = prefix
    return "; ".join([name_value.strip(), f"Path={path}", *kept])


class _UpstreamClosed(Exception):
    pass


async def pipe_both(reader_a, writer_a, reader_b, writer_b, on_data=None) -> tuple[int, int]:
    """Copy bytes both ways until either side closes; returns the bytes copied a->b, b->a.
    ``on_data()`` is called for every piece copied."""
    copied = [0, 0]

    async def pipe(reader, writer, direction):
        try:
            while data := await reader.read(65536):
                if on_data is not None:
                    on_data()
                writer.write(data)
                copied[direction] += len(data)
                await writer.drain()
        except ConnectionError:
            pass

    tasks = [asyncio.ensure_future(pipe(reader_a, writer_b, 0)), asyncio.ensure_future(pipe(reader_b, writer_a, 1))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    return copied[0], copied[1]
