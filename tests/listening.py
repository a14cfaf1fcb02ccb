"""Which local addresses a TCP port listens on, read from /proc (Linux)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def listen_addresses(port: int) -> set[str]:
    """The IPv4 addresses on which something listens on ``port`` ("0.0.0.0" = all)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == LISTEN and int(port_hex, 16) == port:
            # /proc prints the address as a little-endian 32-bit number.
            found.add(str(ipaddress.IPv4Address(bytes.fromhex(address)[::-1])))
    return found
