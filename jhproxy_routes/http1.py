"""Strict HTTP/1.1 message heads and body framing, for a proxy that streams.

Parsing is strict on purpose: whatever two parsers could read differently (both
Content-Length and Transfer-Encoding, two Content-Lengths, folded header lines, bare control
characters) is refused with 400, so that no request can be smuggled past the check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

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
    """A request the sidecar answers itself, with this status and message, and ``headers``
    of its own (CORS headers, so that a browser can read the reason; ``Retry-After``)."""

    def __init__(self, status: int, message: str, headers=()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class Answer(NamedTuple):
    """An answer of the sidecar's own that is not an error: a redirect with its
    ``Location`` and cookies."""

    status: int
    message: str
    headers: list


class RequestLine(NamedTuple):
    method: str
    target: str
    version: str


class StatusLine(NamedTuple):
    version: str
    status: str
    reason: str


class Framing(NamedTuple):
    """How a message's body ends: ``none``, ``length`` (``length`` bytes), ``chunked``, or
    ``close`` (a response read until the connection closes)."""

    kind: str
    length: int = 0


NO_BODY = Framing("none")


@dataclass
class Head:
    """A request or response head; ``headers`` keeps order and case, names are str."""

    start: RequestLine | StatusLine
    headers: list[tuple[str, str]]

    def __post_init__(self):
        # one pass over the headers: every later look-up is a dict access
        index: dict[str, list[str]] = {}
        for key, value in self.headers:
            key = key.lower()
            if key in index:
                index[key].append(value)
            else:
                index[key] = [value]
        self.index = index

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


# one header line (the block is first checked for control characters): a token, a colon,
# the value without the whitespace around it; anchored at each line's start
HEADER_LINE = re.compile(r"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*?)[ \t]*\r\n", re.M)


def _parse_headers(block: bytes, status: int = 400) -> list[tuple[str, str]]:
    """``name: value`` lines separated by CRLF; no control characters anywhere but the CRLFs."""
    if not block:
        return []
    text = block.decode("latin-1") + "\r\n"
    lines = text.count("\r\n")
    if lines > MAX_HEADERS:
        raise HTTPError(431 if status == 400 else status, f"More than {MAX_HEADERS} header lines.")
    if BAD_VALUE.search(block.replace(b"\r\n", b"")):  # one scan for control characters
        raise _header_error(text[:-2].split("\r\n"), status)
    headers = HEADER_LINE.findall(text)
    if len(headers) != lines:  # a line that is no header line
        raise _header_error(text[:-2].split("\r\n"), status)
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
    return Head(RequestLine(method, target, version), _parse_headers(block))


def parse_response_head(data: bytes) -> Head:
    start, block = _split_head(data)
    version, _, rest = start.partition(b" ")
    status, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.0", b"HTTP/1.1") or not STATUS.fullmatch(status):
        raise HTTPError(502, "The app sent a malformed response.")
    if BAD_VALUE.search(reason):
        raise HTTPError(502, "The app sent a malformed status line.")
    return Head(StatusLine(version.decode(), status.decode(), reason.decode("latin-1")), _parse_headers(block, 502))


def request_body_framing(head: Head) -> Framing:
    """``none``, ``length`` or ``chunked``: a request's body."""
    te = head.get_all("Transfer-Encoding")
    cl = head.get_all("Content-Length")
    if te:
        if cl:
            raise HTTPError(400, "Both Content-Length and Transfer-Encoding: refused.")
        if head.start.version != "HTTP/1.1" or len(te) != 1 or te[0].strip().lower() != "chunked":
            raise HTTPError(400, "Only a single 'Transfer-Encoding: chunked' is accepted.")
        return Framing("chunked")
    if cl:
        if len(cl) != 1 or not DIGITS.fullmatch(cl[0]):
            raise HTTPError(400, "Invalid or repeated Content-Length.")
        return Framing("length", int(cl[0])) if int(cl[0]) else NO_BODY
    return NO_BODY


def response_body_framing(head: Head, request_method: str) -> Framing:
    """Framing of a response: none, length, chunked, or ``close`` (read until EOF)."""
    status = int(head.start.status)
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        return NO_BODY
    te = [t.strip().lower() for v in head.get_all("Transfer-Encoding") for t in v.split(",") if t.strip()]
    if te:  # Transfer-Encoding wins over Content-Length (RFC 9112 6.3)
        return Framing("chunked") if te[-1] == "chunked" else Framing("close")
    cl = {v.strip() for v in head.get_all("Content-Length")}
    if cl:
        if len(cl) != 1 or not DIGITS.fullmatch(next(iter(cl))):
            raise HTTPError(502, "The app sent an invalid Content-Length.")
        return Framing("length", int(next(iter(cl))))
    return Framing("close")


def render_head(start_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start_line] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---- bodies, read as they arrive ------------------------------------------------------
# ``feed(data)`` returns what to send on and how many bytes of ``data`` were the body's (the
# rest belongs to the next message); ``done`` once the body is whole; ``size``: its data so
# far. The output is framed anew for the receiving side, never copied as it came.


class LengthBody:
    """A body of ``length`` bytes."""

    __slots__ = ("done", "left", "size")

    def __init__(self, length: int):
        self.left, self.size, self.done = length, 0, length == 0

    def feed(self, data: bytes) -> tuple[bytes, int]:
        take = min(self.left, len(data))
        self.left -= take
        self.size += take
        self.done = self.left == 0
        return (data if take == len(data) else data[:take]), take

    def end(self) -> bytes:
        raise ConnectionError("connection closed in the middle of a body")


class UntilCloseBody:
    """A response that ends when the app closes the connection; with ``chunked`` sent on as
    chunks (to an HTTP/1.1 client), else as it is."""

    __slots__ = ("chunked", "done", "size")

    def __init__(self, chunked: bool):
        self.chunked, self.size, self.done = chunked, 0, False

    def feed(self, data: bytes) -> tuple[bytes, int]:
        self.size += len(data)
        if self.chunked and data:
            return b"%x\r\n%b\r\n" % (len(data), data), len(data)
        return data, len(data)

    def end(self) -> bytes:
        self.done = True
        return b"0\r\n\r\n" if self.chunked else b""


class ChunkedBody:
    """A chunked body, its framing checked as it arrives: sent on as chunks again
    (``rechunk``) or as plain data (to an HTTP/1.0 peer, or to be collected). Chunk
    extensions and trailers are dropped; every line must end in CRLF."""

    __slots__ = ("done", "left", "line", "rechunk", "size", "state", "trailers")

    def __init__(self, rechunk: bool = True):
        self.rechunk, self.size, self.done = rechunk, 0, False
        self.state = "size"  # size line, data, CRLF after the data, trailer lines
        self.line = b""  # a line begun in an earlier piece
        self.left = 0  # data left in the current chunk

    def feed(self, data: bytes) -> tuple[bytes, int]:
        out, i, n = [], 0, len(data)
        while i < n and not self.done:
            if self.state == "data":
                take = min(self.left, n - i)
                out.append(data[i : i + take] if take < n else data)
                i += take
                self.left -= take
                self.size += take
                if not self.left:
                    self.state = "crlf"
                continue
            if self.state == "crlf":
                need = 2 - len(self.line)
                self.line += data[i : i + need]
                i += min(need, n - i)
                if len(self.line) < 2:
                    break
                if self.line != b"\r\n":
                    raise HTTPError(400, "Chunk data not followed by CRLF.")
                self.line, self.state = b"", "size"
                if self.rechunk:
                    out.append(b"\r\n")
                continue
            end = data.find(b"\n", i)
            if end < 0:
                self.line += data[i:]
                if len(self.line) > MAX_CHUNK_LINE:
                    raise HTTPError(400, "Chunk size or trailer line too long.")
                i = n
                break
            line, self.line = self.line + data[i : end + 1], b""
            i = end + 1
            if len(line) > MAX_CHUNK_LINE:
                raise HTTPError(400, "Chunk size or trailer line too long.")
            if not line.endswith(b"\r\n"):
                raise HTTPError(400, "A chunk line must end in CRLF.")
            if self.state == "size":
                self._size_line(line, out)
            elif line == b"\r\n":  # the end of the trailers (dropped)
                self.done = True
                if self.rechunk:
                    out.append(b"0\r\n\r\n")
            else:
                self.trailers += 1
                if self.trailers >= 100:
                    raise HTTPError(400, "Too many trailer lines.")
        return (out[0] if len(out) == 1 else b"".join(out)), i

    def _size_line(self, line: bytes, out: list) -> None:
        size_text = line[:-2].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
            raise HTTPError(400, "Invalid chunk size.")
        size = int(size_text, 16)
        if size == 0:
            self.state, self.trailers = "trailers", 0
            return
        if self.rechunk:
            out.append(b"%x\r\n" % size)
        self.state, self.left = "data", size

    def end(self) -> bytes:
        raise ConnectionError("connection closed in the middle of a chunked body")


def body_reader(framing: Framing, chunked_out: bool = True):
    """The reader of a body with this framing, sending it on chunked where it is not of a
    known length and ``chunked_out`` (the receiver speaks HTTP/1.1); None: no body."""
    if framing.kind == "length":
        return LengthBody(framing.length)
    if framing.kind == "chunked":
        return ChunkedBody(rechunk=chunked_out)
    if framing.kind == "close":
        return UntilCloseBody(chunked_out)
    return None
