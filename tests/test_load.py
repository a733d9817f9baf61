"""Load and faults on a protected port: a real hub, CHP, sidecar and echo app on 127.0.0.1.

- 500 connections at once carry 10,000 mixed requests (downloads and uploads from 1 KiB to
  8 MiB, and websocket sessions): not one error, not one corrupted body (SHA-256 of every
  body checked against what was sent or what the app made).
- The app dies in the middle of a download: the client sees the body cut short (never a hang
  or a wrong "complete" answer), and the next request gets a clear 502; the server is then
  stopped and its route goes away.
"""

import asyncio
import hashlib
import random
import time

import httpx
import pytest
import tornado.httpclient
import tornado.websocket

from jhproxy_routes.transport import KeepAliveTransport

PATTERN = bytes(range(256)) * 256  # what examples/demo_app.py sends
CONNECTIONS = 500
REQUESTS = 10_000
KiB, MiB = 1024, 1024 * 1024


def pattern_sha256(size: int) -> str:
    digest, left = hashlib.sha256(), size
    while left:
        chunk = PATTERN[: min(left, len(PATTERN))]
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def apps(make_app):
    return {"main": make_app(), "doomed": make_app()}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    return make_hub([apps["main"].port, apps["doomed"].port])


@pytest.fixture(scope="module")
def token(hub):
    api_token = hub.user_token("loadtest")
    hub.spawn("loadtest")
    return hub.proxytoken(api_token, "POST", content="random").json()


def workload(seed: int = 8) -> list[tuple[str, int]]:
    """REQUESTS (kind, size): mostly small, some medium, a few of 8 MiB, some websockets."""
    rng = random.Random(seed)
    work = [("ws", 0)] * 100 + [(rng.choice(["down", "up"]), 8 * MiB) for _ in range(40)]
    work += [(rng.choice(["down", "up"]), rng.randrange(64 * KiB, 1 * MiB)) for _ in range(900)]
    work += [(rng.choice(["down", "up"]), rng.randrange(1 * KiB, 64 * KiB)) for _ in range(REQUESTS - len(work))]
    rng.shuffle(work)
    return work


async def test_500_connections_10000_mixed_requests(hub, apps, token):
    base = f"{hub.url}/ports/loadtest/{apps['main'].port}"
    headers = {"X-Proxy-Token": token}
    work = workload()
    queue = iter(work)
    errors, done, expected = [], [0], {}
    client = httpx.AsyncClient(transport=KeepAliveTransport(), timeout=120, headers=headers)

    async def one(kind: str, size: int) -> None:
        if kind == "down":
            response = await client.get(f"{base}/download", params={"bytes": size})
            if response.status_code != 200 or len(response.content) != size:
                raise AssertionError(f"download {size}: HTTP {response.status_code}, {len(response.content)} bytes")
            if hashlib.sha256(response.content).hexdigest() != expected.setdefault(size, pattern_sha256(size)):
                raise AssertionError(f"download {size}: corrupted body")
        elif kind == "up":
            body = random.randbytes(size)
            response = await client.post(f"{base}/upload", content=body)
            echo = response.json()
            if response.status_code != 200 or echo["body_sha256"] != hashlib.sha256(body).hexdigest():
                raise AssertionError(
                    f"upload {size}: HTTP {response.status_code}, app saw {echo.get('body_bytes')} bytes {response.text[:200]}"
                )
        else:
            ws_url = base.replace("http", "ws", 1) + "/ws"
            conn = await tornado.websocket.websocket_connect(
                tornado.httpclient.HTTPRequest(ws_url, headers=headers), max_message_size=MiB
            )
            try:
                for n in (1, 100, 10_000, 65_536):
                    message = random.randbytes(n)
                    await conn.write_message(message, binary=True)
                    if await conn.read_message() != message:
                        raise AssertionError(f"websocket echo of {n} bytes differs")
            finally:
                conn.close()

    async def worker():
        for kind, size in queue:
            try:
                await one(kind, size)
            except Exception as e:  # collected: the test reports them all at the end
                errors.append(f"{kind} {size}: {type(e).__name__}: {e}")
            done[0] += 1

    start = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONNECTIONS))), 240)
    finally:
        await client.aclose()
    elapsed = time.monotonic() - start
    print(f"{done[0]} requests over {CONNECTIONS} connections in {elapsed:.1f}s")
    assert done[0] == len(work) == REQUESTS
    assert not errors, f"{len(errors)} errors, first: {errors[:5]}"
    # every request came through the check to the app: the app saw them all
    seen = apps["main"].received()
    assert sum(1 for r in seen if r["path"].endswith(("/download", "/upload", "/ws"))) >= REQUESTS


async def download_until_the_app_dies(url: str, app, headers: dict, timeout: float) -> tuple[int, Exception]:
    """Read a 4 GiB download and kill the app after 64 MiB: how much came, and how it ended."""
    received = 0
    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            async with client.stream("GET", url, params={"bytes": 4 * 1024 * MiB}, headers=headers) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received > 64 * MiB and app.proc.poll() is None:
                        app.proc.kill()  # the server's app goes away mid-body
        except httpx.TransportError as e:
            return received, e
    raise AssertionError(f"a download cut short after {received} bytes was reported complete")


async def test_app_dies_mid_download(hub, apps, token, make_app):
    path = f"/ports/loadtest/{apps['doomed'].port}/download"
    headers = {"X-Proxy-Token": token}
    # the sidecar closes its side at once: the client is told the body is incomplete
    received, error = await download_until_the_app_dies(f"http://127.0.0.1:{hub.sidecar_port}{path}", apps["doomed"], headers, 30)
    assert 64 * MiB < received < 4 * 1024 * MiB and isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError)), error
    apps["doomed"].proc.wait(10)
    # through CHP (5.3.0): CHP keeps the client's connection open after its upstream closed
    # mid-body (also on a direct CHP route, without the sidecar); the client's read timeout
    # ends it. Never a complete answer.
    apps["doomed"] = make_app(apps["doomed"].port)
    received, error = await download_until_the_app_dies(f"{hub.url}{path}", apps["doomed"], headers, 5)
    assert 64 * MiB < received < 4 * 1024 * MiB, error
    apps["doomed"].proc.wait(10)
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{hub.url}{path}", params={"bytes": 1}, headers=headers)
        assert response.status_code == 502 and "Nothing is listening on port" in response.json()["message"]
        # the other port of the same server is not affected
        main = f"{hub.url}/ports/loadtest/{apps['main'].port}/x"
        assert (await client.get(main, headers=headers)).status_code == 200
        await asyncio.to_thread(hub.stop_server, "loadtest")
        response = await client.get(main, headers=headers)
        assert response.status_code in (302, 404), "the stopped server's port still answers"
