"""``procnet``: the kernel's TCP sockets, read from its tables and asked of ``sock_diag``,
with real sockets of this process and of another system user's (``nobody``, started with
``setpriv``)."""

import ipaddress
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from jhproxy_routes import procnet
from tests.rig import wait_for

NOBODY = 65534

LISTENER = textwrap.dedent(
    """
    import socket, sys
    family, host, v6only, then = sys.argv[1:]
    s = socket.socket(socket.AF_INET6 if family == "6" else socket.AF_INET)
    if family == "6":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.bind((host, 0))
    s.listen()
    print(s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        if then == "close":
            conn.close()
        else:
            sys.stdin.read()  # held until the test ends
    """
)


class Listener:
    """A listening socket in a process of system user ``nobody``: ``family`` 4 or 6,
    ``v6only`` 0 for a dual-stack one, ``then`` what it does with a connection it accepts."""

    def __init__(self, family: str, host: str, v6only: int = 1, then: str = "hold"):
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c", LISTENER]
        self.proc = subprocess.Popen([*command, family, host, str(v6only), then], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the listener as nobody did not start (exit {self.proc.wait(5)})")
        self.port = int(line)

    def stop(self):
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def listener():
    started = []

    def start(*args, **kwargs) -> Listener:
        started.append(Listener(*args, **kwargs))
        return started[-1]

    yield start
    for one in started:
        one.stop()


@pytest.fixture(params=["sock_diag", "tables"])
def lookup(request):
    """Both ways to the uid of a connection's accepted end: asked of the kernel, or read
    from the tables (where netlink is not available)."""
    return {"sock_diag": procnet.accepted_uid, "tables": procnet.accepted_uid_in_tables}[request.param]


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=5)


def test_listening_sockets_with_uid_and_inode():
    """Our own listeners, IPv4 and IPv6, as the port finder will list them: address, port,
    uid and the inode of the socket's file."""
    with socket.socket() as four, socket.socket(socket.AF_INET6) as six:
        four.bind(("127.0.0.1", 0))
        six.bind(("::1", 0))
        four.listen()
        six.listen()
        found = {(s.local[0], s.local[1]): s for s in procnet.listening()}
        for sock, address in ((four, ipaddress.ip_address("127.0.0.1")), (six, ipaddress.ip_address("::1"))):
            row = found[address, sock.getsockname()[1]]
            assert (row.uid, row.inode, row.state) == (os.geteuid(), os.fstat(sock.fileno()).st_ino, "LISTEN")
            assert row.remote[1] == 0


def test_another_users_listener_is_theirs(listener):
    theirs = listener("4", "127.0.0.1")
    [row] = [s for s in procnet.listening() if s.local[1] == theirs.port]
    assert row.uid == NOBODY and row.local[0] == ipaddress.ip_address("127.0.0.1")


def test_sockets_lists_connections_in_their_states(listener):
    theirs = listener("4", "127.0.0.1")
    with connect("127.0.0.1", theirs.port) as ours:
        mine = ours.getsockname()[1]
        rows = [s for s in procnet.sockets() if {s.local[1], s.remote[1]} == {mine, theirs.port}]
        assert {(s.local[1], s.state, s.uid) for s in rows} == {
            (mine, "ESTABLISHED", os.geteuid()),
            (theirs.port, "ESTABLISHED", NOBODY),
        }


@pytest.mark.parametrize(
    "family, host, v6only, connect_to",
    [
        ("4", "127.0.0.1", 1, "127.0.0.1"),  # IPv4
        ("6", "::1", 1, "::1"),  # IPv6
        ("6", "::", 0, "127.0.0.1"),  # dual stack, an IPv4 connection: tcp6, ::ffff:127.0.0.1
        ("6", "::", 0, "::1"),  # dual stack, an IPv6 connection
        ("4", "0.0.0.0", 1, "127.0.0.1"),
    ],
)
def test_the_accepted_end_carries_the_listeners_uid(lookup, listener, family, host, v6only, connect_to):
    """What the sidecar asks of each new connection: whose listener it reached. Also before
    the listener's process has accepted it (the row has no inode yet)."""
    theirs = listener(family, host, v6only)
    with connect(connect_to, theirs.port) as ours:
        assert lookup(ours.getsockname(), ours.getpeername()) == NOBODY
    # the listener itself is not a connection from a port of ours
    assert lookup(("127.0.0.1", 40000), ("127.0.0.1", theirs.port)) is None


def test_our_own_listener_is_ours(lookup):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with connect("127.0.0.1", server.getsockname()[1]) as ours:
            assert lookup(ours.getsockname(), ours.getpeername()) == os.geteuid()


def test_an_ipv6_socket_reaching_an_ipv4_listener(lookup):
    """A connection from an IPv6 socket to ``::ffff:127.0.0.1`` is accepted by an IPv4
    listener: its row is in ``tcp``, found from the mapped addresses."""
    with socket.socket() as server, socket.socket(socket.AF_INET6) as ours:
        server.bind(("127.0.0.1", 0))
        server.listen()
        ours.connect(("::ffff:127.0.0.1", server.getsockname()[1]))
        assert ours.getsockname()[0].startswith("::ffff:")
        assert lookup(ours.getsockname(), ours.getpeername()) == os.geteuid()


def test_no_owner_for_a_connection_that_is_gone(lookup, listener):
    """A listener that closes what it accepts: its end lingers as a socket of the kernel's
    (FIN_WAIT2 once orphaned, TIME_WAIT once we close ours) whose uid column says 0. No
    owner, rather than root."""
    theirs = listener("4", "127.0.0.1", then="close")
    ours = connect("127.0.0.1", theirs.port)
    local, peer = ours.getsockname(), ours.getpeername()

    def their_end():
        address = (ipaddress.ip_address(peer[0]), peer[1])
        return [(s.state, s.uid) for s in procnet.sockets() if s.local == address and s.remote[1] == local[1]]

    assert ours.recv(1) == b""  # they closed: a socket of theirs still (FIN_WAIT1), or the kernel's
    assert lookup(local, peer) in (NOBODY, None)
    ours.close()
    wait_for(lambda: their_end() == [("TIME_WAIT", 0)], 5, "their end in TIME_WAIT")
    assert lookup(local, peer) is None


def test_no_owner_for_an_address_that_is_not_here(lookup):
    assert lookup(("127.0.0.1", 40000), ("127.0.0.1", 9)) is None
    assert lookup(("10.1.2.3", 40000), ("10.9.9.9", 5000)) is None
    assert lookup(("::1", 40000), ("::1", 9)) is None


def test_rows_are_read_in_the_machines_byte_order():
    """The hex of one address is per 32-bit word in native order (little-endian here)."""
    assert procnet._hex(ipaddress.ip_address("127.0.0.1"), 5000) == (
        "0100007F:1388" if sys.byteorder == "little" else "7F000001:1388"
    )
    for text in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "fe80::1:2:3:4"):
        address = ipaddress.ip_address(text)
        assert procnet._address(procnet._hex(address, 8050)) == (address, 8050)
