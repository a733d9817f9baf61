"""The hub's API to the sidecar: reading its calls (the route key of a route API path,
``since`` of an activity request). ``server.py`` answers them.
"""

from __future__ import annotations

from urllib.parse import unquote

from ..http1 import HTTPError
from .access import split_query


def activity_since(target: str) -> float:
    """``since`` of an activity request (400 unless a number of seconds)."""
    since, _ = split_query(target.partition("?")[2], "since")
    try:
        value = float(since or 0)
    except ValueError:
        raise HTTPError(400, "since must be a number of seconds (the now of the last answer).") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise HTTPError(400, "since must be a finite number of seconds.")
    return value


def route_key(path: str) -> str:
    """A table key (unescaped, no trailing slash) from the escaped path of a route API call."""
    try:
        return "/" + "/".join(unquote(s, errors="strict") for s in str(path).split("/") if s)
    except UnicodeDecodeError:
        raise HTTPError(400, "The route path is not valid UTF-8.") from None
