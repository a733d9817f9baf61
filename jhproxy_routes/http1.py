"""Strict HTTP/1.1 message heads and body framing, for a proxy that streams.

Parsing is strict on purpose: whatever two parsers could read differently (both
Content-Length and Transfer-Encoding, two Content-Lengths, folded header lines, bare control
characters) is refused with 400, so that no request can be smuggled past the check.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
MAX_HEADERS = 256
COPY_SIZE = 256 * 1024

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # always with fullmatch
DIGITS = re.compile(r"[0-9]{1,18}")  # always with fullmatch
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
STATUS = re.compile(rb"[1-5][0-9][0-9]")
BAD_TARGET = re.compile(rb"[^\x21-\x7e]|#")  # control characters, spaces, tabs, non-ASCII, fragments
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
}


class HTTPError(Exception):
    """A request the sidecar answers itself, with this status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Head:
    """A request or response head; ``headers`` keeps order and case, names are str."""

    start: tuple[str, str, str]  # (method, target, version) or (version, status, reason)
    headers: list[tuple[str, str]]

    def __post_init__(self):
        # one pass over the headers: every later look-up is a dict access
        self.index: dict[str, list[str]] = {}
        for key, value in self.headers:
            self.index.setdefault(key.lower(), []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return self.index.get(name.lower(), [])

    def tokens(self, name: str) -> set[str]:
        """Comma-separated, case-insensitive tokens of a header (e.g. Connection)."""
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}


def _header_error(lines: list[str], status: int) -> HTTPError:
    """The precise reason why header lines failed the fast checks."""
    for line in lines:
        if line[:1] in (" ", "\t"):
            return HTTPError(status, "Folded header lines (obs-fold) are not accepted.")
        name, colon, value = line.partition(":")
        if not colon or not TOKEN.fullmatch(name.encode("latin-1")):
            return HTTPError(status, "Malformed header line.")
        if BAD_VALUE.search(value.encode("latin-1")):
            return HTTPError(status, f"Control characters in header {name}.")
    return HTTPError(status, "Malformed header block.")


def _is_token(name: str) -> bool:
    # the common case (letters, digits, '-') without a regex; anything else: the exact rule
    return (name.isascii() and name.replace("-", "").isalnum()) or TOKEN.fullmatch(name.encode("latin-1")) is not None


def _parse_headers(block: bytes, status: int = 400) -> list[tuple[str, str]]:
    """``name: value`` lines separated by CRLF; no control characters anywhere but the CRLFs."""
    lines = block.decode("latin-1").split("\r\n") if block else []
    if len(lines) > MAX_HEADERS:
        raise HTTPError(431 if status == 400 else status, f"More than {MAX_HEADERS} header lines.")
    if BAD_VALUE.search(block.replace(b"\r\n", b"")):  # one scan for control characters
        raise _header_error(lines, status)
    headers = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _is_token(name):
            raise _header_error(lines, status)
        headers.append((name, value.strip(" \t")))
    return headers


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """The start line and the header lines of a head that ends in CRLF CRLF."""
    end = data.index(b"\r\n")
    return data[:end], data[end + 2 : -4]


def parse_request_head(data: bytes) -> Head:
    start, block = _split_head(data)
    parts = start.split(b" ")
    if len(parts) != 3 or not TOKEN.fullmatch(parts[0]):
        raise HTTPError(400, "Malformed request line.")
    method, target, version = (p.decode("latin-1") for p in parts)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HTTPError(400, "Only HTTP/1.0 and HTTP/1.1 are supported.")
    if not target.startswith("/") or BAD_TARGET.search(parts[1]):
        raise HTTPError(400, "The request target must be a path starting with '/', in printable ASCII without '#'.")
    return Head((method, target, version), _parse_headers(block))


def parse_response_head(data: bytes) -> Head:
    start, block = _split_head(data)
    version, _, rest = start.partition(b" ")
    status, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.0", b"HTTP/1.1") or not STATUS.fullmatch(status):
        raise HTTPError(502, "The app sent a malformed response.")
    if BAD_VALUE.search(reason):
        raise HTTPError(502, "The app sent a malformed status line.")
    return Head((version.decode(), status.decode(), reason.decode("latin-1")), _parse_headers(block, 502))


def request_body_framing(head: Head) -> tuple[str, int]:
    """``("none", 0)``, ``("length", n)`` or ``("chunked", 0)`` for a request."""
    te = head.get_all("Transfer-Encoding")
    cl = head.get_all("Content-Length")
    if te:
        if cl:
            raise HTTPError(400, "Both Content-Length and Transfer-Encoding: refused.")
        if head.start[2] != "HTTP/1.1" or len(te) != 1 or te[0].strip().lower() != "chunked":
            raise HTTPError(400, "Only a single 'Transfer-Encoding: chunked' is accepted.")
        return "chunked", 0
    if cl:
        if len(cl) != 1 or not DIGITS.fullmatch(cl[0]):
            raise HTTPError(400, "Invalid or repeated Content-Length.")
        return ("length", int(cl[0])) if int(cl[0]) else ("none", 0)
    return "none", 0


def response_body_framing(head: Head, request_method: str) -> tuple[str, int]:
    """Framing of a response: none, length, chunked, or ``close`` (read until EOF)."""
    status = int(head.start[1])
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        return "none", 0
    te = [t.strip().lower() for v in head.get_all("Transfer-Encoding") for t in v.split(",") if t.strip()]
    if te:  # Transfer-Encoding wins over Content-Length (RFC 9112 6.3)
        return ("chunked", 0) if te[-1] == "chunked" else ("close", 0)
    cl = {v.strip() for v in head.get_all("Content-Length")}
    if cl:
        if len(cl) != 1 or not DIGITS.fullmatch(next(iter(cl))):
            raise HTTPError(502, "The app sent an invalid Content-Length.")
        return "length", int(next(iter(cl)))
    return "close", 0


def render_head(start_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start_line] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def copy_length(reader, writer, length: int) -> int:
    """Copy exactly ``length`` bytes; returns ``length``."""
    total = length
    while length:
        data = await reader.read(min(length, COPY_SIZE))
        if not data:
            raise ConnectionError("connection closed in the middle of a body")
        length -= len(data)
        writer.write(data)
        await writer.drain()
    return total


async def read_line(reader) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise HTTPError(400, "Chunk size or trailer line too long.") from None
    if len(line) > MAX_CHUNK_LINE:
        raise HTTPError(400, "Chunk size or trailer line too long.")
    return line


async def copy_chunked(reader, writer, rechunk: bool = True) -> int:
    """Copy a chunked body, checking its framing; chunk extensions and trailers are dropped.
    With ``rechunk`` False only the data is written (for an HTTP/1.0 peer). Returns the
    size of the data."""
    total = 0
    while True:
        line = await read_line(reader)
        size_text = line[:-2].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
            raise HTTPError(400, "Invalid chunk size.")
        size = int(size_text, 16)
        if size == 0:
            for _ in range(100):  # trailers, dropped
                if await read_line(reader) == b"\r\n":
                    break
            else:
                raise HTTPError(400, "Too many trailer lines.")
            if rechunk:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            return total
        if rechunk:
            writer.write(b"%x\r\n" % size)
        total += await copy_length(reader, writer, size)
        if await reader.readexactly(2) != b"\r\n":
            raise HTTPError(400, "Chunk data not followed by CRLF.")
        if rechunk:
            writer.write(b"\r\n")


async def copy_until_close(reader, writer, chunked: bool) -> int:
    """Copy until EOF; with ``chunked`` the output is framed as chunks. Returns the size."""
    total = 0
    while True:
        data = await reader.read(COPY_SIZE)
        if not data:
            break
        total += len(data)
        writer.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    return total
