"""Hostile requests from a data file (tests/data/hostile_requests.json), sent byte for byte
through the real CHP, straight to the real sidecar (as if CHP had let them through), and to
the hub's token API: path traversal, smuggling, oversized and malformed input, bad tokens,
CORS and Host tricks.

Each must get a clean answer (4xx unless the entry says otherwise; never a 5xx, never a
traceback), and no request may reach an app it should not: the victim's app sees none of
them, the attacker's own app only those the entry allows.
"""

import json
import re
import socket
import time
from pathlib import Path

import pytest

CORPUS = json.loads((Path(__file__).parent / "data" / "hostile_requests.json").read_text())["requests"]
CASES = [(entry, via) for entry in CORPUS for via in entry["via"]]


@pytest.fixture(scope="module")
def apps(make_app):
    return {"own": make_app(), "victim": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    return make_hub(
        [apps["own"].port, apps["victim"].port],
        # client_timeout: a head that never completes (bare LF line ends) gets 408 within 2 s
        "c.PortRoutes.cors_origins = ['https://good.example']\nc.PortRoutes.bad_token_limit = 0\nc.PortRoutes.client_timeout = 1",
    )


@pytest.fixture(scope="module")
def values(hub, apps):
    """What the placeholders stand for: mallory attacks, alice is the victim."""
    mallory_api = hub.user_token("mallory")
    hub.spawn("mallory")
    own_token = hub.proxytoken(mallory_api, "POST", content="random").json()
    alice_api = hub.user_token("alice")
    hub.spawn("alice")
    assert hub.proxytoken(alice_api, "POST", content="random").status_code == 200
    browser = hub.login("mallory")
    cookies = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    return {
        "host": f"127.0.0.1:{hub.port}",
        "sidecar_host": f"127.0.0.1:{hub.sidecar_port}",
        "own": f"/ports/mallory/{apps['own'].port}",
        "own_port": apps["own"].port,
        "victim": f"/ports/alice/{apps['victim'].port}",
        "victim_rel": f"alice/{apps['victim'].port}",
        "victim_port": apps["victim"].port,
        "victim_server": "alices-notebook",
        "own_token": own_token,
        "own_token_prefix": own_token[:10],
        "own_api_token": mallory_api,
        "own_login_cookies": cookies,
    }


def fill(request: str, values: dict) -> str:
    """The request with its placeholders filled in; ``{content_length}`` last, from the body."""
    text = re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), request)
    body = text.partition("\r\n\r\n")[2]
    return text.replace("{content_length}", str(len(body.encode("latin-1" if "\xff" in body else "utf-8"))))


def exchange(port: int, raw: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read one response (by its framing), or whatever comes before EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before all was sent: the answer is still there to read
        data, deadline = b"", time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            if complete(data):
                break
        return data


def complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.lower().split(b"\r\n")
    for line in lines:
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    if any(line.startswith(b"transfer-encoding:") and b"chunked" in line for line in lines):
        return body.endswith(b"0\r\n\r\n")
    return b" 204 " in lines[0] or b" 304 " in lines[0] or b" 1" in lines[0][8:11]


@pytest.mark.parametrize("entry, via", CASES, ids=[f"{via}: {e['name']}" for e, via in CASES])
def test_hostile_request(hub, apps, values, entry, via):
    raw = fill(entry["request"], values).encode(entry.get("encoding", "utf-8"))
    port = hub.sidecar_port if via == "sidecar" else hub.port
    before = {name: len(app.received()) for name, app in apps.items()}
    response = exchange(port, raw)
    assert response, f"the connection closed without an answer ({via})"
    status_line, _, rest = response.partition(b"\r\n")
    status = int(status_line.split(b" ")[1])
    expect = entry["expect"]
    if isinstance(expect, dict):
        expect = expect[via]
    head, _, body = rest.partition(b"\r\n\r\n")
    if expect == "4xx":
        assert 400 <= status < 500, response[:600]
    elif expect == "4xx or hub redirect":
        to_hub = status == 302 and re.search(rb"(?im)^location: /hub/", head)
        assert 400 <= status < 500 or to_hub, response[:600]
    elif expect == "any":
        assert status < 500, response[:600]
    else:
        assert status in expect, response[:600]
    assert b"Traceback" not in body and b'File "' not in body, body[:600]
    assert b"access-control-allow-credentials" not in head.lower()
    if "location_not_contains" in entry:
        location = [h for h in head.lower().split(b"\r\n") if h.startswith(b"location:")]
        assert not any(entry["location_not_contains"].encode() in h.split(b"?")[0] for h in location), location
    time.sleep(0.2)  # anything smuggled behind the answer has arrived by now
    received = {name: app.received()[before[name] :] for name, app in apps.items()}
    assert not received["victim"], "the request reached the victim's app"
    if entry["reach"] == "none":
        assert not received["own"], "the request reached an app"
    assert len(received["own"]) <= 1, f"one request became several: {[r['path'] for r in received['own']]}"
    assert not any("smuggled" in r["path"] for r in received["own"]), "a smuggled request reached the app"


def test_the_corpus_is_big_enough():
    assert len(CORPUS) >= 50
    assert {e["category"] for e in CORPUS} >= {"traversal", "smuggling", "size", "utf8", "token", "cors", "host", "token-api"}
