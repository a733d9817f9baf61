"""Shared hosts, from bob's side: two real system users whose servers run on the hub's
machine under their own uids (LocalProcessSpawner, no ``allow_shared_host``), and apps of
each on the machine's ports. A route reaches only its own user's listener, checked on the
very connection the sidecar opened: bob's app on alice's port is never reached, whether it
was there first, took the port after alice's app stopped (with alice's pooled connection
fresh), listens dual-stack, or sits behind a public port; nor does bob's route reach
alice's app through a connection pooled for her. Alice's own app is reached.

Each refused request is first shown to be one that would arrive: bob's app answers on the
port directly. What reached an app is what it recorded (the echo app's ``/__log__``). Last,
which uid is a server's own (``targets.py``), on real processes and system users.
"""

import asyncio
import html
import json
import os
import pwd
import secrets
import subprocess
import sys
from types import SimpleNamespace

import httpx
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from jhproxy_routes.errors import SharedHostError
from jhproxy_routes.targets import own_uid, process_uid, server_uid, system_uid
from tests import rig
from tests.rig import ADMIN_TOKEN, BIN, free_port, port_open, wait_for

SUFFIX = secrets.token_hex(3)
ALICE, BOB = f"alice{SUFFIX}", f"bob{SUFFIX}"  # system users made for this module, removed after
PORTS = {name: free_port() for name in ("shared", "own", "swap", "public", "dual")}


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def root_view(module_tmp) -> list[str]:
    return rig.root_view(module_tmp)


@pytest.fixture(scope="module")
def as_user(root_view):
    """``as_user(name)``: a command prefix that runs a command as system user ``name``."""
    return lambda name: [*root_view, "setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups"]


@pytest.fixture(scope="module")
def uids(root_view):
    """ALICE and BOB as real system users with homes, able to run the venv's
    jupyterhub-singleuser as LocalProcessSpawner starts it (after setuid, without root's
    capabilities: ``runuser``); removed at the end (after the hub and the apps, set up later)."""
    made = []
    try:
        for name in (ALICE, BOB):
            result = run("useradd", "--create-home", "--shell", "/bin/bash", name)
            if result.returncode:
                pytest.fail(f"useradd {name} failed (the test needs root): {result.stderr}", pytrace=False)
            made.append(name)
            result = run(*root_view, "runuser", "-u", name, "--", str(BIN / "jupyterhub-singleuser"), "--version")
            if result.returncode:
                pytest.fail(f"{name} cannot run {BIN}/jupyterhub-singleuser (permissions?): {result.stderr}", pytrace=False)
        yield {name: pwd.getpwnam(name).pw_uid for name in made}
    finally:
        for name in made:
            result = run("userdel", "--remove", name)
            assert result.returncode == 0, f"userdel {name}: {result.stderr}"


@pytest.fixture(scope="module")
def hub(uids, root_view, make_hub):
    ports = [PORTS["shared"], PORTS["own"], PORTS["swap"], {"port": PORTS["public"], "access": "public"}, PORTS["dual"]]
    config = """
        c.JupyterHub.spawner_class = "localprocess"  # each server as its user's own system user
        c.Spawner.args = []  # not root: no --allow-root
        c.PortRoutes.allow_shared_host = False
    """
    hub = make_hub(ports, config, command_prefix=root_view)
    hub.tokens = {}
    for name in (ALICE, BOB):
        api_token = hub.user_token(name)
        hub.spawn(name)
        hub.tokens[name] = hub.proxytoken(api_token, "POST", content="random").json()
    return hub


@pytest.fixture(scope="module")
def user_app(uids, make_app, as_user):
    """``user_app(port, name)``: the echo app on ``port``, run by system user ``name``."""
    return lambda port, name: make_app(port, command_prefix=as_user(name))


def port_get(hub, user: str, port: int, rest: str = "/", **kwargs) -> httpx.Response:
    """A script calling ``user``'s port with ``user``'s port token."""
    headers = {"X-Proxy-Token": hub.tokens[user], **kwargs.pop("headers", {})}
    return hub.get(f"/ports/{user}/{port}{rest}", headers=headers, **kwargs)


def websocket_status(url: str, token: str) -> int:
    """The status a websocket to ``url`` with the port token gets (101: opened)."""

    async def attempt():
        try:
            connection = await websocket_connect(HTTPRequest(url, headers={"X-Proxy-Token": token}))
        except HTTPClientError as e:
            return e.code
        connection.close()
        return 101

    return asyncio.run(attempt())


def assert_refused(response: httpx.Response, port: int, other: str = BOB) -> None:
    """The sidecar's page for another user's port: a 502 saying so, never naming ``other``
    (whose it is)."""
    text = html.unescape(response.text)
    assert response.status_code == 502, text
    assert f"Port {port} on this machine is another user's" in text
    assert other not in text and "uid" not in text


def test_every_port_goes_through_the_sidecar_and_no_allow_shared_host(hub, uids):
    """Public ports too: CHP could not check whose listener it reaches."""
    routes = hub.port_routes()
    for name in (ALICE, BOB):
        mine = {path: data for path, data in routes.items() if path.startswith(f"/ports/{name}/")}
        assert len(mine) == len(PORTS) and {data["target"] for data in mine.values()} == {hub.sidecar_url}
    servers = hub.child_pids("jupyterhub-singleuser")  # they really run as their users
    assert sorted(process_uid(pid) for pid in servers) == sorted(uids.values())


@pytest.fixture(scope="module")
def alices_app(hub, user_app):
    return user_app(PORTS["own"], ALICE)


def test_alices_own_app_is_reached(hub, alices_app):
    response = port_get(hub, ALICE, PORTS["own"], "/hello")
    assert response.status_code == 200, response.text
    assert [entry["path"] for entry in alices_app.received()] == [f"/ports/{ALICE}/{PORTS['own']}/hello"]


def test_bobs_app_on_alices_port_is_never_reached(hub, user_app, uids):
    """Bob's app listens first on a port alice's route allows: alice's calls, a script's
    (JSON), a browser's (a page), a POST with a body and a websocket, get the sidecar's 502;
    the refusal is logged, counted and audited; bob's app sees nothing."""
    port = PORTS["shared"]
    bobs = user_app(port, BOB)
    assert httpx.get(f"http://127.0.0.1:{port}/direct").status_code == 200  # it answers whoever reaches it
    seen = len(bobs.received())
    response = port_get(hub, ALICE, port, "/api")
    assert_refused(response, port)
    assert response.headers["content-type"] == "application/json" and response.json()["status"] == 502
    page = port_get(hub, ALICE, port, "/", headers={"Accept": "text/html"})
    assert_refused(page, port)
    assert page.headers["content-type"].startswith("text/html")
    posted = httpx.post(f"{hub.url}/ports/{ALICE}/{port}/", headers={"X-Proxy-Token": hub.tokens[ALICE]}, content=b"x" * 1000)
    assert_refused(posted, port)
    assert websocket_status(hub.url.replace("http", "ws", 1) + f"/ports/{ALICE}/{port}/ws", hub.tokens[ALICE]) == 502
    assert len(bobs.received()) == seen

    audit = [json.loads(line) for line in (hub.dir / "jhproxy-routes-audit.jsonl").read_text().splitlines()]
    denied = [e for e in audit if e["event"] == "denied" and e["reason"] == "another user's listener" and e["port"] == port]
    assert len(denied) >= 4 and {(e["owner"], e["listener_uid"]) for e in denied} == {(ALICE, uids[BOB])}
    metrics = hub.get("/services/jhproxy-routes/metrics", headers={"Authorization": f"token {ADMIN_TOKEN}"}).text
    assert 'jhproxy_routes_sidecar_denied_total{reason="another user\'s listener"}' in metrics
    assert f"refused GET /ports/{ALICE}/{port}/api: the listener on port {port} is uid {uids[BOB]}'s" in hub.log()


def test_a_listener_swapped_after_a_pooled_connection(hub, user_app):
    """Alice's app answers (its connection stays in the sidecar's pool), stops, and bob's
    app takes the port at once: alice's route never reaches bob's app."""
    port = PORTS["swap"]
    alices = user_app(port, ALICE)
    assert port_get(hub, ALICE, port).status_code == 200
    alices.stop()
    bobs = user_app(port, BOB)
    assert httpx.get(f"http://127.0.0.1:{port}/direct").status_code == 200
    seen = len(bobs.received())
    for _ in range(3):
        assert_refused(port_get(hub, ALICE, port, "/after-the-swap"), port)
    assert len(bobs.received()) == seen


def test_bobs_route_never_takes_a_connection_pooled_for_alice(hub, alices_app):
    """Bob's server allows the same port: his route to it must not reach alice's app, not
    even over the connection alice's request left in the pool a moment ago."""
    port = PORTS["own"]
    assert port_get(hub, ALICE, port, "/alice").status_code == 200
    seen = len(alices_app.received())
    assert_refused(port_get(hub, BOB, port, "/bob"), port, other=ALICE)
    assert len(alices_app.received()) == seen


def test_a_public_port_is_checked_too(hub, user_app):
    """A public port of a server on a shared host goes through the sidecar: bob's app on it
    is refused like any other; alice's own app there is open to anyone."""
    port = PORTS["public"]
    bobs = user_app(port, BOB)
    assert httpx.get(f"http://127.0.0.1:{port}/direct").status_code == 200
    seen = len(bobs.received())
    assert_refused(hub.get(f"/ports/{ALICE}/{port}/"), port)
    assert len(bobs.received()) == seen
    bobs.stop()
    alices = user_app(port, ALICE)
    assert hub.get(f"/ports/{ALICE}/{port}/open").status_code == 200
    assert [entry["path"] for entry in alices.received()] == [f"/ports/{ALICE}/{port}/open"]


def test_a_dual_stack_listener_of_another_user(hub, module_tmp, as_user):
    """Bob's server on ``::`` taking IPv4 too (Python's ``http.server --bind ::``, as Node.js
    listens by default): the sidecar's IPv4 connection is accepted as ``::ffff:127.0.0.1``
    in ``tcp6``, still bob's. Alice's route is refused; bob's server logs no request."""
    port, log_path = PORTS["dual"], module_tmp / "bob-dual-stack.log"
    command = [*as_user(BOB), sys.executable, "-m", "http.server", "--bind", "::", "--directory", f"/home/{BOB}", str(port)]
    proc = subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open(port), 15, "bob's dual-stack server", log_path)
        assert_refused(port_get(hub, ALICE, port, "/dual"), port)
        assert "GET" not in log_path.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200  # IPv4 reaches it directly
        wait_for(lambda: '"GET / HTTP/1.1" 200' in log_path.read_text(), 5, "the direct request in its log", log_path)
    finally:
        proc.terminate()
        proc.wait(10)


# ---- which uid is a server's own (targets.py), on real processes and system users -----------
def test_a_servers_uid_is_its_process_s_or_its_system_user_s():
    """LocalProcessSpawner: the uid its process really runs as (here a process of nobody's);
    SystemdSpawner: its ``username_template`` user (TLJH sets the name itself); unknown
    for dynamic users and for users that do not exist."""
    nobody = pwd.getpwnam("nobody")
    user = SimpleNamespace(name="x", id=1)
    proc = subprocess.Popen(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "sleep", "30"])
    try:
        wait_for(lambda: process_uid(proc.pid) == nobody.pw_uid, 5, "the process to drop to nobody")
        assert system_uid(SimpleNamespace(pid=proc.pid, user=user)) == nobody.pw_uid
    finally:
        proc.kill()
        proc.wait(5)
    assert system_uid(SimpleNamespace(pid=proc.pid, user=user)) is None  # gone
    assert system_uid(SimpleNamespace(username_template="nobody", user=user)) == nobody.pw_uid
    assert system_uid(SimpleNamespace(username_template="{USERNAME}-nobody", user=user)) is None
    assert system_uid(SimpleNamespace(username_template="nobody", dynamic_users=True, user=user)) is None
    assert system_uid(SimpleNamespace(user=user)) is None  # another spawner: the hook says


@pytest.mark.parametrize(
    "uid, allowed, expected",
    [
        (1001, False, 1001),  # a user of its own: checked, no permission needed
        (os.geteuid(), False, "the hub's own system user or root"),
        (0, False, "the hub's own system user or root"),
        (None, False, "the system user it runs as is not known"),
        (os.geteuid(), True, None),  # allowed as a shared host: not checked
        (None, True, None),
        (1001, True, 1001),
    ],
)
def test_the_uid_a_route_checks_on_the_hubs_machine(uid, allowed, expected):
    if isinstance(expected, str):
        with pytest.raises(SharedHostError, match=expected) as refused:
            own_uid("127.0.0.1", uid, allowed)
        assert "c.PortRoutes.allow_shared_host = True" in str(refused.value)
    else:
        assert own_uid("127.0.0.1", uid, allowed) == expected


async def test_the_admins_hook_says_the_uid():
    spawner = SimpleNamespace(pid=os.getpid(), user=SimpleNamespace(name="x", id=1))

    async def looked_up(spawner):
        return 1234

    assert await server_uid(spawner) == os.geteuid()
    assert await server_uid(spawner, looked_up) == 1234
    assert await server_uid(spawner, lambda spawner: None) is None
    with pytest.raises(SharedHostError, match="server_uid returned '1234'"):
        await server_uid(spawner, lambda spawner: "1234")
