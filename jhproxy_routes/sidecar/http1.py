"""Strict HTTP/1.1 message heads and body framing, for a proxy that streams.

Parsing is strict on purpose: whatever two parsers could read differently (both
Content-Length and Transfer-Encoding, two Content-Lengths, folded header lines, bare control
characters) is refused with 400, so that no request can be smuggled past the check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
COPY_SIZE = 256 * 1024

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization",
}  # fmt: skip


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

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def tokens(self, name: str) -> set[str]:
        """Comma-separated, case-insensitive tokens of a header (e.g. Connection)."""
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise HTTPError(400, "Folded header lines (obs-fold) are not accepted.")
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.match(name):
            raise HTTPError(400, "Malformed header line.")
        value = value.strip(b" \t")
        if BAD_VALUE.search(value):
            raise HTTPError(400, f"Control characters in header {name.decode()}.")
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return headers


def parse_request_head(data: bytes) -> Head:
    lines = data[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not TOKEN.match(parts[0]):
        raise HTTPError(400, "Malformed request line.")
    method, target, version = (p.decode("latin-1") for p in parts)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HTTPError(505, "Only HTTP/1.0 and HTTP/1.1 are supported.")
    if not target.startswith("/") or BAD_VALUE.search(parts[1]) or b"#" in parts[1]:
        raise HTTPError(400, "The request target must be a path starting with '/'.")
    return Head((method, target, version), _parse_headers(lines[1:]))


def parse_response_head(data: bytes) -> Head:
    lines = data[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    status, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(status) != 3 or not status.isdigit():
        raise HTTPError(502, "The app sent a malformed response.")
    return Head((version.decode(), status.decode(), reason.decode("latin-1")), _parse_headers(lines[1:]))


def request_body_framing(head: Head) -> tuple[str, int]:
    """``("none", 0)``, ``("length", n)`` or ``("chunked", 0)`` for a request."""
    te = head.get_all("Transfer-Encoding")
    cl = head.get_all("Content-Length")
    if te:
        if cl:
            raise HTTPError(400, "Both Content-Length and Transfer-Encoding: refused.")
        if head.start[2] != "HTTP/1.1" or len(te) != 1 or te[0].strip().lower() != "chunked":
            raise HTTPError(501, "Only 'Transfer-Encoding: chunked' is supported.")
        return "chunked", 0
    if cl:
        if len(cl) != 1 or not cl[0].isdigit() or len(cl[0]) > 18:
            raise HTTPError(400, "Invalid or repeated Content-Length.")
        return ("length", int(cl[0])) if int(cl[0]) else ("none", 0)
    return "none", 0


def response_body_framing(head: Head, request_method: str) -> tuple[str, int]:
    """Framing of a response: none, length, chunked, or ``close`` (read until EOF)."""
    status = int(head.start[1])
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        return "none", 0
    te = head.tokens("Transfer-Encoding")
    if te:
        return ("chunked", 0) if head.get_all("Transfer-Encoding")[-1].lower().rstrip().endswith("chunked") else ("close", 0)
    cl = head.get_all("Content-Length")
    if cl:
        if len(set(cl)) != 1 or not cl[0].isdigit():
            raise HTTPError(502, "The app sent an invalid Content-Length.")
        return "length", int(cl[0])
    return "close", 0


def render_head(start_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start_line] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def copy_length(reader, writer, length: int) -> None:
    while length:
        data = await reader.read(min(length, COPY_SIZE))
        if not data:
            raise ConnectionError("connection closed in the middle of a body")
        length -= len(data)
        writer.write(data)
        await writer.drain()


async def copy_chunked(reader, writer) -> None:
    """Copy a chunked body, checking its framing; chunk extensions and trailers are dropped."""
    while True:
        line = await reader.readuntil(b"\r\n")
        if len(line) > MAX_CHUNK_LINE:
            raise HTTPError(400, "Chunk size line too long.")
        size_text = line[:-2].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
            raise HTTPError(400, "Invalid chunk size.")
        size = int(size_text, 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return
        writer.write(b"%x\r\n" % size)
        await copy_length(reader, writer, size)
        if await reader.readexactly(2) != b"\r\n":
            raise HTTPError(400, "Chunk data not followed by CRLF.")
        writer.write(b"\r\n")


async def copy_until_close(reader, writer, chunked: bool) -> None:
    """Copy until EOF; with ``chunked`` the output is framed as chunks."""
    while True:
        data = await reader.read(COPY_SIZE)
        if not data:
            break
        writer.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()
