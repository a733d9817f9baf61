"""The kernel's TCP socket tables, ``/proc/net/tcp`` and ``/proc/net/tcp6``: who owns a socket.

Each row is one socket of the reader's network namespace: local and remote address (hex,
each 32-bit word in the machine's byte order), state (``0A`` is LISTEN), then, among
others, the owner's uid and the socket's inode (``/proc/<pid>/fd/*`` links read
``socket:[<inode>]``; 0 for a connection no process has accepted yet). An accepted
connection inherits its listener's uid, already while it waits in the listen queue.

- :func:`sockets` and :func:`listening`: the rows, parsed (a port finder's view).
- :func:`accepted_uid`: the uid of the socket that accepted one given connection, found by
  its exact addresses without parsing the whole table: whose listener a connection just
  opened really reached, however the listener on that port changed before or after.

An IPv4 connection accepted by a dual-stack listener (``::``) is a row of ``tcp6`` with
IPv4-mapped addresses (``::ffff:127.0.0.1``); :func:`accepted_uid` looks in both tables.
"""

from __future__ import annotations

import ipaddress
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
#: the timer column of a socket the kernel keeps after its process closed it (TIME_WAIT, or
#: FIN_WAIT2 once orphaned): it belongs to no one, and its uid column says 0
KERNELS_OWN_TIMER = "03"


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
    """The listening sockets, with their uid and inode."""
    return [s for s in sockets(tables) if s.state == "LISTEN"]


def accepted_uid(local: tuple, peer: tuple, tables: tuple[str, str] = TABLES) -> int | None:
    """The uid of the socket that accepted our connection from ``local`` to ``peer`` (its
    ``getsockname()`` and ``getpeername()``): the row whose local end is ``peer`` and whose
    remote end is ``local``, that is, the uid of the listener the connection reached. None
    if there is no such row (not on this machine), or only one the kernel keeps after the
    listener's process closed its end. ``tables``: the
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
            if not fields[4].startswith(KERNELS_OWN_TIMER):  # closed: uid 0 would be a lie
                return int(fields[6])
            at = text.find(key, at + 1)
    return None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address from ``getsockname()``, IPv4-mapped IPv6 as IPv4 (the kernel writes an
    IPv4 connection of an IPv6 socket in ``tcp`` or ``tcp6`` by the socket's family)."""
    address = ipaddress.ip_address(text.partition("%")[0])
    return getattr(address, "ipv4_mapped", None) or address
