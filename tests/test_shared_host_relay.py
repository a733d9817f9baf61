"""The loopback relay on the hub's own machine, where the servers are local
processes (LocalProcessSpawner, here its simple form) that listen on a concrete address of
the machine (``c.Spawner.ip = "<the machine's own address>"``) instead of 127.0.0.1.

Such a server is on the hub's machine (``targets.is_hub_machine`` knows the machine's own
addresses): were it taken for one with a network of its own, the hub would tell its part to
relay, and the part would open alice's loopback-only app on every address of the shared
machine, where anyone on the network reaches it without the proxy, the sidecar or a token.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from jhproxy_routes.interfaces import own_addresses
from tests.rig import free_port, port_open, wait_for

ADDRESS = next((a for a in own_addresses() if ":" not in a), None)


@pytest.fixture(scope="module")
def ports():
    return {"allowed": free_port(), "idle": free_port()}


@pytest.fixture(scope="module")
def hub(make_hub, ports):
    assert ADDRESS, "this machine has no non-loopback IPv4 address"
    return make_hub([ports["allowed"], ports["idle"]], f'c.Spawner.ip = "{ADDRESS}"\n')


@pytest.fixture(scope="module")
def app(module_tmp, ports, alice):
    (module_tmp / "secret.txt").write_text("alice's loopback-only data\n")
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(ports["allowed"])], cwd=module_tmp)
    wait_for(lambda: port_open(ports["allowed"]), 15, "the app")
    yield proc
    proc.terminate()
    proc.wait(10)


def raw_get(address: str, port: int, path: str = "/secret.txt") -> bytes:
    with socket.create_connection((address, port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data


def test_an_address_of_the_machine_is_the_hubs_machine():
    from jhproxy_routes.targets import is_hub_machine

    assert all(is_hub_machine(address) for address in own_addresses())
    assert not is_hub_machine("192.0.2.254") or "192.0.2.254" in own_addresses()


def test_the_hub_must_not_ask_for_a_relay_on_its_own_machine(hub, alice, app, ports):
    settings = hub.proxytoken(alice, params={"format": "full"}).json()
    assert settings["running"]
    assert settings["loopback_relay"] is False, "the hub asks alice's server on the hub's machine to relay"


def test_a_loopback_only_app_is_not_opened_to_the_machines_network(hub, alice, app, ports):
    """An app alice started on 127.0.0.1 only: nobody on the network may reach it directly
    at the machine's address (no proxy, no sidecar, no token in between)."""
    time.sleep(4)  # a few rounds of the watch
    opened = port_open_at(ADDRESS, ports["allowed"])
    body = raw_get(ADDRESS, ports["allowed"]) if opened else b""
    assert not opened, f"{ADDRESS}:{ports['allowed']} answers directly: {body[-200:]!r}"


def port_open_at(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((address, port)) == 0
