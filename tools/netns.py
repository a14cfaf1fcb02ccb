"""Hosts on one machine: a Linux bridge and one network namespace per host, each joined to
the bridge by a veth pair, with an address on a private /24 (`make cluster`, its test).

The root namespace gets the bridge's own address (.1), so a browser and an XMPP client on
this machine reach any host directly. Every name carries one random tag, so two layouts (or
a leftover of a killed run) never share a name, and close() removes exactly its own.

A process is put on a host in one of two ways:
* `prefix(host)` + argv: `ip netns exec <ns> …` (services started as commands);
* `with net.inside(host):` around code that starts processes (the existing tools/*.py
  start their servers with subprocess): setns(2) moves the calling thread only, and a
  child forked by that thread is born in the host's namespace. Sockets the thread opens
  meanwhile (the tools' readiness checks) are in that namespace too.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); `ip` from iproute2.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


@dataclass
class Host:
    name: str  # e.g. "edge"
    netns: str  # e.g. "habla-1a2b3c-edge"
    address: str  # e.g. "10.213.7.10"
    veth: str  # the root end of its veth pair (on the bridge)


@dataclass
class Net:
    tag: str
    subnet: str  # the first three octets, e.g. "10.213.7"
    bridge: str
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge."""
        return f"{self.subnet}.1"

    def add_host(self, name: str) -> Host:
        number = len(self.hosts) + 10
        host = Host(name, f"habla-{self.tag}-{name}", f"{self.subnet}.{number}", f"hb{self.tag}{number}")
        self.hosts[name] = host  # registered first: close() removes what was half made
        ip("netns", "add", host.netns)
        # Interface names are at most 15 characters: hb + 6-hex tag + number, and eth0 inside.
        ip("link", "add", host.veth, "type", "veth", "peer", "name", f"{host.veth}p")
        ip("link", "set", f"{host.veth}p", "netns", host.netns)
        ip("-n", host.netns, "link", "set", f"{host.veth}p", "name", "eth0")
        ip("link", "set", host.veth, "master", self.bridge, "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")
        ip("-n", host.netns, "link", "set", "lo", "up")
        ip("-n", host.netns, "route", "add", "default", "via", self.gateway)
        return host

    def prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host].netns]

    @contextlib.contextmanager
    def inside(self, host: str) -> Iterator[Host]:
        """Run the block (and the processes it starts) in the host's namespace."""
        target = self.hosts[host]
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            theirs = os.open(f"/run/netns/{target.netns}", os.O_RDONLY)
            try:
                _setns(theirs)
            finally:
                os.close(theirs)
            try:
                yield target
            finally:
                _setns(own)
        finally:
            os.close(own)

    def pids(self) -> list[int]:
        """Every process still living in one of our namespaces."""
        found: list[int] = []
        for host in self.hosts.values():
            done = ip("netns", "pids", host.netns, check=False)
            found += [int(pid) for pid in done.stdout.split()]
        return found

    def host_pids(self, host: str) -> list[int]:
        """The processes running on one host."""
        done = ip("netns", "pids", self.hosts[host].netns, check=False)
        return [int(pid) for pid in done.stdout.split()]

    def kill(self, host: str) -> list[int]:
        """SIGKILL every process in one host's namespace (the host dies); returns their pids
        once they are gone. The namespace and its link stay: the host can be started again."""
        pids = self.host_pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        _reap(pids)
        return pids

    def close(self) -> None:
        """SIGKILL whatever is left in our namespaces, then remove them, the veths, the bridge."""
        left = self.pids()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        _reap(left)
        for host in self.hosts.values():
            ip("netns", "del", host.netns, check=False)  # takes its eth0 and so the veth pair
            ip("link", "del", host.veth, check=False)
        ip("link", "del", self.bridge, check=False)


def _alive(pid: int) -> bool:
    """Running (a zombie has finished: only its parent's wait is missing)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _reap(pids: list[int], timeout_s: float = 10) -> None:
    """Wait for SIGKILLed processes to be gone; collect those that are our children."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _alive(pid):
                break
            time.sleep(0.05)


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if _alive(pid)]


def leftovers(tag: str) -> list[str]:
    """Namespaces and links of a layout that should be gone (for the teardown test)."""
    names = ip("netns", "list").stdout.split("\n") + ip("-o", "link", "show").stdout.split("\n")
    return [line for line in names if f"habla-{tag}-" in line or f"hb{tag}" in line]


def create(subnet: str | None = None) -> Net:
    """A bridge with the root namespace on it at <subnet>.1 (hosts via add_host)."""
    tag = secrets.token_hex(3)
    # A random 10.x.y/24: two layouts side by side do not collide.
    subnet = subnet or f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250) + 1}"
    net = Net(tag, subnet, f"hb{tag}br")
    try:
        ip("link", "add", net.bridge, "type", "bridge")
        ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
        ip("link", "set", net.bridge, "up")
    except BaseException:
        net.close()
        raise
    return net
