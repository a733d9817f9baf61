"""Review probe: on a shared Docker network, bob's container reaches alice's relayed
loopback-only app directly at alice's container address, past the proxy and the sidecar
(alice's port is left private: access "server")."""

from __future__ import annotations

from tests.rig import wait_for
from tests.test_docker import container
from tests.test_loopback_relay import ALLOWED, relay_hub


def test_bob_reaches_alices_private_relayed_app_directly(make_hub, engine):
    hub = relay_hub(make_hub, engine)
    alice = hub.user_token("alice")
    hub.spawn("alice")
    hub.user_token("bob")
    hub.spawn("bob")
    alice_ip = container(engine, hub, "alice")["NetworkSettings"]["Networks"]["podman"]["IPAddress"]
    settings = hub.proxytoken(alice, params={"format": "full"}).json()
    assert {str(p["port"]): p for p in settings["ports"]}[str(ALLOWED)]["access"] == "server"
    # through the proxy: refused, the port is alice's alone
    assert hub.get(f"/ports/alice/{ALLOWED}/hello").status_code in (302, 401, 403)
    client = engine["client"]
    bob = container(engine, hub, "bob")["Id"]
    code = (
        "import socket,sys;s=socket.create_connection((sys.argv[1],int(sys.argv[2])),5);"
        "s.sendall(b'GET /hello HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n');print(s.recv(4096).decode())"
    )

    def from_bob():
        run = client.exec_create(bob, ["/opt/venv/bin/python", "-c", code, alice_ip, str(ALLOWED)])
        out = client.exec_start(run["Id"]).decode(errors="replace")
        return out if "200" in out.split("\n", 1)[0] else None

    out = wait_for(from_bob, 20, "bob's container to reach alice's app directly", hub.log_path)
    print("bob's container got, from alice's 127.0.0.1-only app:\n", out)
    raise AssertionError(f"bob reached alice's private loopback-only app directly: {out[:300]}")
