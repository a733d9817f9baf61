"""Websockets and streamed answers let in by a hub login end when the login no longer gets in.

What an attacker would try: keep a websocket opened while they had access (a member of the
port's group, a share of the server, a user of the hub, a hub login of their own) after that
access is gone: Streamlit, Panel, Gradio and Voilà run entirely over one websocket, so a
check at the upgrade alone would let them use the app until the tab closes. The same with an
answer that streams for long (server-sent events, a download), also after the port token that
let it in is replaced.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.rig import ADMIN_TOKEN, wait_for

CACHE_AGE = 1  # login_cache_max_age: the sidecar checks open login websockets this often
CLOSED_WITHIN = 10 * CACHE_AGE + 5  # seconds: a check, the hub's answer cached, the next check


@pytest.fixture(scope="module")
def apps(make_app):
    return {access: make_app() for access in ("group:staff", "shared", "users", "owner")}


@pytest.fixture(scope="module")
def hub(make_hub, apps):
    ports = [{"port": app.port, "access": access} for access, app in apps.items()]
    config = f"""
        c.PortRoutes.login_cache_max_age = {CACHE_AGE}
        c.JupyterHub.load_roles.append({{"name": "user", "scopes": ["self", "shares!user", "read:users:name"]}})
    """
    hub = make_hub(ports, "\n".join(line.strip() for line in config.splitlines()))
    hub.tokens = {user: hub.user_token(user) for user in ("alice", "bob", "carol", "dave")}
    assert hub.api("POST", "/groups/staff", json={"users": ["bob"]}).status_code == 201
    hub.spawn("alice")
    return hub


def port_path(apps, access: str) -> str:
    return f"/ports/alice/{apps[access].port}/"


def logged_in(hub, apps, user: str, access: str) -> httpx.Client:
    """``user``'s browser, logged into the hub and, through the sidecar's OAuth, into the port."""
    client = hub.login(user)
    page = client.get(port_path(apps, access), follow_redirects=True)
    assert page.status_code == 200, page.text[:300]
    return client


async def open_websocket(hub, apps, client: httpx.Client, access: str):
    """A websocket of the port's own page, with the browser's cookies."""
    cookies = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)
    url = hub.url.replace("http://", "ws://") + port_path(apps, access) + "ws"
    ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookies, "Origin": hub.url}))
    ws.write_message("hello")
    assert await asyncio.wait_for(ws.read_message(), 10) == "hello"
    return ws


async def still_open_after(ws, seconds: float) -> None:
    """The websocket works through several of the sidecar's checks while access holds."""
    await asyncio.sleep(seconds)
    ws.write_message("still")
    assert await asyncio.wait_for(ws.read_message(), 10) == "still", "a websocket was closed while its login still got in"


async def assert_closed(ws, what: str) -> None:
    try:
        message = await asyncio.wait_for(ws.read_message(), CLOSED_WITHIN)
    except asyncio.TimeoutError:
        raise AssertionError(f"the websocket outlived the loss of access ({what})") from None
    assert message is None, f"the websocket outlived the loss of access ({what})"


async def test_leaving_the_group_closes_the_websocket(hub, apps):
    bob = await asyncio.to_thread(logged_in, hub, apps, "bob", "group:staff")
    ws = await open_websocket(hub, apps, bob, "group:staff")
    await still_open_after(ws, 3 * CACHE_AGE)
    removed = await asyncio.to_thread(hub.api, "DELETE", "/groups/staff/users", json={"users": ["bob"]})
    assert removed.status_code == 200, removed.text
    await assert_closed(ws, "bob left the group staff")
    assert (await asyncio.to_thread(bob.get, port_path(apps, "group:staff"))).status_code == 403


async def test_revoking_the_share_closes_the_websocket(hub, apps):
    shared = await asyncio.to_thread(hub.api, "POST", "/shares/alice/", token=hub.tokens["alice"], json={"user": "carol"})
    assert shared.status_code == 200, shared.text
    carol = await asyncio.to_thread(logged_in, hub, apps, "carol", "shared")
    ws = await open_websocket(hub, apps, carol, "shared")
    await still_open_after(ws, 3 * CACHE_AGE)
    revoked = await asyncio.to_thread(hub.api, "PATCH", "/shares/alice/", token=hub.tokens["alice"], json={"user": "carol"})
    assert revoked.status_code == 200, revoked.text
    await assert_closed(ws, "alice stopped sharing her server with carol")


async def test_deleting_the_user_closes_the_websocket(hub, apps):
    dave = await asyncio.to_thread(logged_in, hub, apps, "dave", "users")
    ws = await open_websocket(hub, apps, dave, "users")
    await still_open_after(ws, 3 * CACHE_AGE)
    assert (await asyncio.to_thread(hub.api, "DELETE", "/users/dave")).status_code == 204
    await assert_closed(ws, "an admin deleted dave")


async def test_logging_out_of_the_hub_closes_the_websocket(hub, apps):
    alice = await asyncio.to_thread(logged_in, hub, apps, "alice", "owner")
    ws = await open_websocket(hub, apps, alice, "owner")
    await still_open_after(ws, 3 * CACHE_AGE)
    await asyncio.to_thread(alice.get, "/hub/logout")
    await assert_closed(ws, "alice logged out of the hub")


def hub_requests_for_whoami(hub) -> int:
    """How many times the hub has answered ``GET /hub/api/user`` (its own Prometheus count)."""
    metrics = hub.api("GET", "/metrics", token=ADMIN_TOKEN).text
    pattern = r'jupyterhub_request_duration_seconds_count\{code="200",handler="jupyterhub\.apihandlers\.users\.SelfAPIHandler",method="GET"\} ([0-9.e+]+)'
    return sum(int(float(n)) for n in re.findall(pattern, metrics))


async def test_many_websockets_of_one_login_cost_the_hub_one_request_per_check(hub, apps):
    alice = await asyncio.to_thread(logged_in, hub, apps, "alice", "owner")
    sockets = [await open_websocket(hub, apps, alice, "owner") for _ in range(10)]
    before, started = await asyncio.to_thread(hub_requests_for_whoami, hub), time.monotonic()
    await asyncio.sleep(6 * CACHE_AGE)
    asked = await asyncio.to_thread(hub_requests_for_whoami, hub) - before
    checks = (time.monotonic() - started) / CACHE_AGE
    # one question per check for the one session (two at most where a check and the cache's
    # expiry cross), not one per websocket: ten websockets would ask ~60 times
    assert 1 <= asked <= 2 * checks + 1, f"the hub was asked {asked} times in {checks:.1f} checks for 10 websockets"
    for ws in sockets:
        ws.write_message("ok")
        assert await asyncio.wait_for(ws.read_message(), 10) == "ok"
        ws.close()


def stream_outlives(client: httpx.Client, url: str, revoke, **kwargs) -> float:
    """Read a download that would take hours, slowly, call ``revoke()`` once it flows, and
    return how many seconds after that the sidecar ended it (AssertionError if it did not)."""
    ended = None
    with client.stream("GET", url, params={"bytes": 1 << 40}, timeout=60, **kwargs) as response:
        assert response.status_code == 200, response.read()[:300]
        chunks = response.iter_raw(1 << 16)
        next(chunks)
        revoke()
        revoked = time.monotonic()
        try:
            while time.monotonic() - revoked < CLOSED_WITHIN:
                next(chunks)
                time.sleep(0.05)
        except (httpx.HTTPError, StopIteration):
            ended = time.monotonic() - revoked
    assert ended is not None, f"the answer kept streaming {CLOSED_WITHIN}s after access was gone"
    return ended


def test_a_streamed_answer_ends_with_the_login(hub, apps):
    alice = logged_in(hub, apps, "alice", "owner")
    url = port_path(apps, "owner") + "download"
    stream_outlives(alice, url, lambda: alice.get("/hub/logout"), headers={"Referer": hub.url + port_path(apps, "owner")})
    assert alice.get(url, params={"bytes": 10}).status_code in (302, 403)  # and no new request gets in


def test_a_streamed_answer_ends_with_its_token(hub, apps):
    token = hub.proxytoken(hub.tokens["alice"], "POST", content="random").json()
    script = httpx.Client(base_url=hub.url, headers={"X-Proxy-Token": token})
    url = port_path(apps, "users") + "download"  # (an owner-only port takes no token)
    wait_for(lambda: script.get(url, params={"bytes": 10}).status_code == 200, 15, "the new token to reach the sidecar")
    stream_outlives(script, url, lambda: hub.proxytoken(hub.tokens["alice"], "POST", content="random"))
    assert script.get(url, params={"bytes": 10}).status_code == 403
