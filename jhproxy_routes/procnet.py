"""The kernel's TCP sockets, ``/proc/net/tcp`` and ``/proc/net/tcp6``: who owns a socket.

Each row is one socket of the reader's network namespace: local and remote address (hex,
each 32-bit word in the machine's byte order), state (``0A`` is LISTEN), then, among
others, the owner's uid and the socket's inode (``/proc/<pid>/fd/*`` links read
``socket:[<inode>]``; 0 for a connection no process has accepted yet). An accepted
connection inherits its listener's uid, already while it waits in the listen queue.

- :func:`sockets` and :func:`listening`: the rows, parsed (a port finder's view).
- :func:`accepted_uid`: the uid of the socket that accepted one given connection: whose
  listener a connection just opened really reached, however the listener on that port
  changed before or after. The kernel writes every socket's row for each read of a table
  (milliseconds; tens of them with thousands of sockets), so this asks its ``sock_diag``
  netlink interface for that one socket by its exact addresses (tens of microseconds);
  :func:`accepted_uid_in_tables` finds the same in the tables, where netlink is not
  available (it raises OSError there).

An IPv4 connection accepted by a dual-stack listener (``::``) is a row of ``tcp6`` with
IPv4-mapped addresses (``::ffff:127.0.0.1``); both look-ups find it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
#: the kernel's TCP states, by their hex code in the ``st`` column
STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}
#: the timer of a socket the kernel keeps after its process closed it (TIME_WAIT, or
#: FIN_WAIT2 once orphaned): it belongs to no one, and its uid says 0; as does a connection
#: in the handshake (SYN_RECV) to netlink
KERNELS_OWN_TIMER, SYN_RECV, LISTEN = 3, 3, 10


@dataclass(frozen=True)
class TCPSocket:
    """One row: ``local`` and ``remote`` as (address, port), IPv4-mapped IPv6 addresses as
    the kernel shows them (``::ffff:127.0.0.1``)."""

    local: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
    remote: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
    state: str  # a name of STATES
    uid: int
    inode: int  # 0: no process holds it (yet)


def _address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:1388`` -> (127.0.0.1, 5000)."""
    hex_ip, _, hex_port = text.partition(":")
    packed = b"".join(
        bytes.fromhex(hex_ip[i : i + 8])[:: -1 if sys.byteorder == "little" else 1] for i in range(0, len(hex_ip), 8)
    )
    return ipaddress.ip_address(packed), int(hex_port, 16)


def _hex(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """(127.0.0.1, 5000) -> ``0100007F:1388``, as the tables write it."""
    packed = address.packed
    words = (packed[i : i + 4][:: -1 if sys.byteorder == "little" else 1] for i in range(0, len(packed), 4))
    return "".join(w.hex().upper() for w in words) + f":{port:04X}"


def _row(line: str) -> TCPSocket:
    fields = line.split()
    return TCPSocket(
        local=_address(fields[1]),
        remote=_address(fields[2]),
        state=STATES.get(fields[3], fields[3]),
        uid=int(fields[7]),
        inode=int(fields[9]),
    )


def _read(path: str) -> str:
    try:
        with open(path) as table:
            return table.read()
    except FileNotFoundError:  # no IPv6 in this kernel
        return ""


def sockets(tables: tuple[str, str] = TABLES) -> Iterator[TCPSocket]:
    """Every TCP socket of this network namespace (every user's on a shared host)."""
    for path in tables:
        for line in _read(path).splitlines()[1:]:
            yield _row(line)


def listening(tables: tuple[str, str] = TABLES) -> list[TCPSocket]:
    """The listening sockets, with their uid and inode. Of this network namespace, asked
    of the kernel for listeners alone (``sock_diag``: the tables write every socket, tens of
    milliseconds with thousands of connections); from ``tables`` (another namespace's
    ``/proc/<pid>/net/...``) where given, or where netlink cannot be asked."""
    if tables == TABLES:
        try:
            return listening_sockets()
        except OSError:
            pass
    return [s for s in sockets(tables) if s.state == "LISTEN"]


# sock_diag (linux/sock_diag.h, linux/inet_diag.h): one request for one socket by its addresses
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLMSG_ERROR, NLM_F_REQUEST = 4, 20, 2, 1
NO_COOKIE = 0xFFFFFFFF
REQUEST = struct.Struct("=IHHII BBBxI 2s2s16s16sIII")  # nlmsghdr, inet_diag_req_v2 and its sockid
REPLY = struct.Struct("=16x xBBx 2x2s 44x 12x I")  # nlmsghdr, inet_diag_msg: state, timer, remote port, uid


NLM_F_DUMP, NLMSG_DONE = 0x300, 3
DIAG_MSG = struct.Struct("=BBBx2s2s16s16s4x8x12xII")  # inet_diag_msg: family, state, timer, ports, addresses, uid, inode


def listening_sockets() -> list[TCPSocket]:
    """Every listening TCP socket of this network namespace, IPv4 and IPv6, from one
    ``sock_diag`` dump per family that asks for the LISTEN state alone (raises OSError
    where netlink cannot be asked)."""
    found = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as diag:
        for family in (socket.AF_INET, socket.AF_INET6):
            request = REQUEST.pack(
                REQUEST.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, 0,
                family, socket.IPPROTO_TCP, 0, 1 << LISTEN,
                b"\0\0", b"\0\0", bytes(16), bytes(16), 0, NO_COOKIE, NO_COOKIE,
            )  # fmt: skip
            diag.send(request)
            found += _dump_replies(diag, family)
    return found


def _dump_replies(diag: socket.socket, family: int) -> list[TCPSocket]:
    size = 4 if family == socket.AF_INET else 16
    found = []
    while True:
        reply = diag.recv(1 << 16)
        at = 0
        while at + 16 <= len(reply):
            length, kind = struct.unpack_from("=IH", reply, at)
            if kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR:
                error = -struct.unpack_from("=i", reply, at + 16)[0]
                raise OSError(error, f"sock_diag: {os.strerror(error)}")
            _, state, _, local_port, remote_port, local, remote, uid, inode = DIAG_MSG.unpack_from(reply, at + 16)
            found.append(
                TCPSocket(
                    local=(ipaddress.ip_address(local[:size]), int.from_bytes(local_port, "big")),
                    remote=(ipaddress.ip_address(remote[:size]), int.from_bytes(remote_port, "big")),
                    state=STATES.get(f"{state:02X}", str(state)),
                    uid=uid,
                    inode=inode,
                )
            )
            at += (length + 3) & ~3
        if not reply:
            return found


def accepted_uid(local: tuple, peer: tuple) -> int | None:
    """The uid of the socket that accepted our connection from ``local`` to ``peer`` (its
    ``getsockname()`` and ``getpeername()``): the socket whose local end is ``peer`` and
    whose remote end is ``local``, that is, the uid of the listener the connection reached.
    None if there is no such socket (not on this machine), or only one the kernel keeps
    after the listener's process closed its end, or one still in the handshake. Asks the
    kernel (``sock_diag``) of this network namespace; raises OSError where that cannot be
    asked (:func:`accepted_uid_in_tables` then)."""
    ours, theirs = _ip(local[0]), _ip(peer[0])
    family = socket.AF_INET if theirs.version == 4 else socket.AF_INET6
    request = REQUEST.pack(
        REQUEST.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0,
        family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF,  # any state
        peer[1].to_bytes(2, "big"), local[1].to_bytes(2, "big"), theirs.packed, ours.packed, 0, NO_COOKIE, NO_COOKIE,
    )  # fmt: skip
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as diag:
        diag.send(request)
        reply = diag.recv(65536)
    kind = struct.unpack_from("=H", reply, 4)[0]
    if kind == NLMSG_ERROR:
        error = -struct.unpack_from("=i", reply, 16)[0]
        if error == 2:  # ENOENT: no such socket
            return None
        raise OSError(error, f"sock_diag: {os.strerror(error)}")
    state, timer, remote_port, uid = REPLY.unpack_from(reply)
    # without an exact match the kernel answers with the port's listener, which is not our
    # connection's; the kernel's own sockets after a close, and one in the handshake, say uid 0
    if int.from_bytes(remote_port, "big") != local[1] or state in (LISTEN, SYN_RECV) or timer == KERNELS_OWN_TIMER:
        return None
    return uid


def accepted_uid_in_tables(local: tuple, peer: tuple, tables: tuple[str, str] = TABLES) -> int | None:
    """:func:`accepted_uid`, from the row of the tables whose local end is ``peer`` and
    whose remote end is ``local``: milliseconds instead of microseconds. ``tables``: the
    IPv4 and the IPv6 table (``/proc/<pid>/net/...`` for another network namespace)."""
    ours, theirs = _ip(local[0]), _ip(peer[0])
    rows = []  # the table the row can be in, and its two addresses as written there
    if theirs.version == 4:
        rows.append((tables[0], f"{_hex(theirs, peer[1])} {_hex(ours, local[1])}"))
        theirs, ours = (ipaddress.IPv6Address(f"::ffff:{a}") for a in (theirs, ours))
    rows.append((tables[1], f"{_hex(theirs, peer[1])} {_hex(ours, local[1])}"))
    for path, addresses in rows:
        text, key = _read(path), f": {addresses} "  # "<sl>: " comes before a row's local address only
        at = text.find(key)
        while at >= 0:
            fields = text[at + 2 : text.find("\n", at)].split()  # local, remote, st, tx:rx, tr:when, retrnsmt, uid
            if int(fields[4][:2], 16) != KERNELS_OWN_TIMER and int(fields[2], 16) != SYN_RECV:
                return int(fields[6])
            at = text.find(key, at + 1)
    return None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address from ``getsockname()``, IPv4-mapped IPv6 as IPv4 (the kernel writes an
    IPv4 connection of an IPv6 socket in ``tcp`` or ``tcp6`` by the socket's family)."""
    address = ipaddress.ip_address(text.partition("%")[0])
    return getattr(address, "ipv4_mapped", None) or address
