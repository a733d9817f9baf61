"""The addresses of this machine's (or container's) network: in a user's server, where the
proxy reaches a server with a network of its own (a container's, a pod's), and so where the
relay listens for a loopback-only app; in the hub, how it knows a server at an address of
its own machine (``targets.is_hub_machine``).

IPv4: each interface's address (``SIOCGIFADDR``); IPv6: the global addresses of
``/proc/net/if_inet6``. Loopback and link-local addresses are left out.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

SIOCGIFADDR = 0x8915
IF_INET6 = "/proc/net/if_inet6"


def own_addresses() -> list[str]:
    """The non-loopback addresses of this network namespace, IPv4 first."""
    return ipv4_addresses() + ipv6_addresses()


def ipv4_addresses() -> list[str]:
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            address = ipaddress.IPv4Address(answer[20:24])
            if not address.is_loopback and not address.is_link_local and str(address) not in found:
                found.append(str(address))
    return found


def ipv6_addresses(table: str = IF_INET6) -> list[str]:
    found = []
    try:
        with open(table) as rows:
            for row in rows:
                fields = row.split()
                address = ipaddress.IPv6Address(int(fields[0], 16))
                if fields[3] == "00" and not address.is_loopback and not address.is_link_local:
                    found.append(str(address))
    except OSError:  # no IPv6 here
        pass
    return found
