"""Values from requests in log lines: never a line of their own, never a terminal escape.

``shown(value)`` is a value as it may be logged: control characters (CR, LF, ESC, ...) and
the invisible ones that reorder or hide text escaped as Python writes them (``\\n``,
``\\x1b``, ``\\u202e``), long values cut. ``EscapingFormatter`` does the same to the message of
every record of a process that uses it (the sidecar), so a call that forgot ``shown`` still
writes one honest line; tracebacks keep their lines.
"""

from __future__ import annotations

import logging
import re

UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")
MAX_SHOWN = 300


def escape(text: str) -> str:
    """``text`` with every unsafe character written as its escape."""
    return UNSAFE.sub(lambda m: repr(m.group())[1:-1], text) if UNSAFE.search(text) else text


def shown(value, limit: int = MAX_SHOWN) -> str:
    """A value from a request, as it may be logged: escaped, and cut after ``limit`` characters."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return escape(text)


class EscapingFormatter(logging.Formatter):
    """A formatter whose messages are always one line (tracebacks are added after)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)
