"""HTTP/1.1 parsing and framing (``http1.py``), shared by the hub and the sidecar: what an
attacker would try is in the parameters (smuggling through disagreeing framing, malformed
heads, bad chunks).
"""

import pytest

from jhproxy_routes.http1 import (
    ChunkedBody,
    HTTPError,
    parse_request_head,
    request_body_framing,
)


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    "raw, status",
    [
        (head("GET /x HTTP/1.1", "Host: a", "Content-Length: 5", "Transfer-Encoding: chunked"), 400),
        (head("GET /x HTTP/1.1", "Content-Length: 5", "Content-Length: 6"), 400),
        (head("GET /x HTTP/1.1", "Content-Length: 5", "Content-Length: 5"), 400),
        (head("GET /x HTTP/1.1", "Content-Length: -1"), 400),
        (head("GET /x HTTP/1.1", "Content-Length: 0x10"), 400),
        (head("GET /x HTTP/1.1", "Transfer-Encoding: gzip, chunked"), 400),
        (head("GET /x HTTP/1.1", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), 400),
        (head("GET /x HTTP/1.0", "Transfer-Encoding: chunked"), 400),
    ],
)
def test_ambiguous_framing_is_refused(raw, status):
    with pytest.raises(HTTPError) as info:
        request_body_framing(parse_request_head(raw))
    assert info.value.status == status


@pytest.mark.parametrize(
    "raw, status",
    [
        (head("GET /x HTTP/1.1", "X-A: 1", " folded"), 400),
        (head("GET /x HTTP/1.1", "Bad Name: 1"), 400),
        (head("GET /x HTTP/1.1", "X: a\x00b"), 400),
        (head("GET /x HTTP/1.1", "X: a\rb"), 400),
        (head("GET /x HTTP/1.1", "X: a\nb"), 400),
        (head("GET /x HTTP/1.1", "X\xe9: 1"), 400),
        (head("GET /x HTTP/1.1", ": 1"), 400),
        (head("GET /x HTTP/1.1", "no colon"), 400),
        (head("GET http://evil/x HTTP/1.1"), 400),
        (head("GET * HTTP/1.1"), 400),
        (head("GET /x HTTP/2.0"), 400),
        (head("GET /\xff HTTP/1.1"), 400),
        (head("GET /x\tHTTP/1.1 HTTP/1.1"), 400),
        (head("GET\n /x HTTP/1.1"), 400),
        (head("GET /x HTTP/1.1", *[f"X-{i}: 1" for i in range(257)]), 431),
        (head("GET  /x HTTP/1.1"), 400),
        (head("G(T /x HTTP/1.1"), 400),
    ],
)
def test_malformed_heads_are_refused(raw, status):
    with pytest.raises(HTTPError) as info:
        parse_request_head(raw)
    assert info.value.status == status


def test_header_errors_name_their_reason():
    reasons = {}
    for line in ("X-A: 1\r\n folded", "X: a\x01b", "Bad Name: 1"):
        with pytest.raises(HTTPError) as info:
            parse_request_head(head("GET /x HTTP/1.1", line))
        reasons[line] = info.value.message
    assert "obs-fold" in reasons["X-A: 1\r\n folded"]
    assert reasons["X: a\x01b"] == "Control characters in header X."
    assert reasons["Bad Name: 1"] == "Malformed header line."


def test_header_names_and_values_as_sent():
    request = parse_request_head(head("GET /x HTTP/1.1", "X!#$%&'*+.^_`|~: \t v a\tl \t", "Empty:", "Host:h"))
    assert request.headers == [("X!#$%&'*+.^_`|~", "v a\tl"), ("Empty", ""), ("Host", "h")]
    assert request.get("host") == "h"


def test_framing_of_good_requests():
    assert request_body_framing(parse_request_head(head("POST / HTTP/1.1", "Content-Length: 12"))) == ("length", 12)
    assert request_body_framing(parse_request_head(head("POST / HTTP/1.1", "Transfer-Encoding: Chunked"))) == ("chunked", 0)
    assert request_body_framing(parse_request_head(head("GET / HTTP/1.1"))) == ("none", 0)


def read_chunks(raw: bytes, piece: int) -> bytes:
    """``raw`` read as a chunked body arriving ``piece`` bytes at a time; its end required."""
    body, out = ChunkedBody(), b""
    for i in range(0, len(raw), piece):
        data, used = body.feed(raw[i : i + piece])
        out += data
        assert used == len(raw[i : i + piece]) or body.done
    if not body.done:
        body.end()
    return out


async def copy_chunks(raw: bytes) -> bytes:
    whole = read_chunks(raw, len(raw))
    assert read_chunks(raw, 1) == whole  # the same, however the body is split
    return whole


async def test_chunked_bodies_are_checked():
    assert await copy_chunks(b"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n") == b"3\r\nabc\r\n0\r\n\r\n"
    for bad in (b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcd\r\n0\r\n\r\n", b"-3\r\nabc\r\n0\r\n\r\n", b"\r\n"):
        with pytest.raises(HTTPError):
            await copy_chunks(bad)
