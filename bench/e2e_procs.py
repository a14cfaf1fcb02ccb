"""CPU seconds of every process of the suite, read from /proc before and after a phase.

The suite is the services `make run` starts (children of tools.devstack), its SMTP
sink, its Prosody, and the shared servers found by the port they listen on (RabbitMQ,
Redis, MariaDB). The shared servers also serve every other test run on this machine,
so their figures include whatever else ran during the phase: read them as an upper
bound on a shared machine.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
# Where the shared servers listen on this machine (../shared/notes/servers.md).
SHARED_SERVERS = {"rabbitmq": 5672, "redis": 6379, "mariadb": 3306}
BENCH = "bench client"
WRK = "wrk (load tool)"
WALL = "(wall clock)"  # a snapshot's time, so a phase knows how long it lasted


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list: Python forks from any thread)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # stat fields 14 and 15


def tree_cpu_seconds(pid: int) -> float:
    """A process and its direct children (nginx's worker)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def listening_pid(port: int) -> int | None:
    """The process that listens on 127.0.0.1/any ``port`` (TCP), found through its socket inode."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


@dataclass
class Suite:
    """Name -> pid of every process whose CPU a phase is charged with."""

    pids: dict[str, int]
    # CPU seconds per second with no load of ours: other runs on the shared servers, the
    # services' heartbeats and sweeps. Subtracted from each phase (clamped at 0).
    idle: dict[str, float] = field(default_factory=dict)

    @classmethod
    def find(cls, devstack_pid: int, prosody_pidfile: Path, extra: Iterable[tuple[str, int]] = ()) -> Suite:
        pids: dict[str, int] = {}
        if prosody_pidfile.exists():
            pids["prosody"] = int(prosody_pidfile.read_text().strip())
        for child in children(devstack_pid):
            args = cmdline(child)
            if child in pids.values() or "-m" not in args[:-1]:
                continue
            pids[args[args.index("-m") + 1].removeprefix("services.").removeprefix("tools.")] = child
        for name, port in SHARED_SERVERS.items():
            pid = listening_pid(port)
            if pid is not None:
                pids[f"{name} (shared)"] = pid
        pids.update(extra)
        return cls(pids)

    def snapshot(self) -> dict[str, float]:
        seconds = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        seconds[BENCH] = cpu_seconds(os.getpid())
        own = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has been reaped
        seconds[WRK] = own.ru_utime + own.ru_stime
        seconds[WALL] = time.monotonic()
        return seconds

    async def measure_idle(self, seconds: float) -> None:
        before = self.snapshot()
        await asyncio.sleep(seconds)
        after = self.snapshot()
        used = measure(before, after)
        self.idle = {name: cpu / (after[WALL] - before[WALL]) for name, cpu in used.items() if name in self.pids}

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """CPU seconds of each process since the snapshot ``before``, less its idle rate."""
        after = self.snapshot()
        elapsed = after[WALL] - before[WALL]
        used = measure(before, after)
        return {name: max(0.0, cpu - self.idle.get(name, 0.0) * elapsed) for name, cpu in used.items()}


def devstack_pid() -> int:
    """The `python -m tools.devstack` this process started (tests/devstack/stack.py)."""
    for child in children(os.getpid()):
        if "tools.devstack" in cmdline(child):
            return child
    raise RuntimeError("no tools.devstack child process: is the stack running?")


@dataclass
class Phase:
    name: str
    unit: str  # "page views" | "chat lines"
    count: int
    cpu: dict[str, float]  # process -> CPU seconds during the phase

    def per_million(self, process: str) -> float:
        return self.cpu.get(process, 0.0) / max(1, self.count) * 1e6


def measure(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after if name != WALL}


def table(phases: list[Phase]) -> list[str]:
    """One line per process: CPU seconds per 1 M units (chat lines or page views) of each phase."""
    processes = sorted({name for phase in phases for name in phase.cpu}, key=_order)
    width = max(12, *(len(p.name) + 2 for p in phases))
    lines = [
        f"  {'process':<22}" + "".join(f"{p.name:>{width}}" for p in phases),
        f"  {'(per 1 M)':<22}" + "".join(f"{p.unit:>{width}}" for p in phases),
    ]
    for process in processes:
        lines.append(f"  {process:<22}" + "".join(f"{p.per_million(process):>{width}.0f}" for p in phases))
    suite = [p for p in processes if p not in (BENCH, WRK)]
    totals = [sum(phase.per_million(name) for name in suite) for phase in phases]
    lines.append(f"  {'suite total':<22}" + "".join(f"{t:>{width}.0f}" for t in totals))
    return lines


def _order(name: str) -> tuple[int, str]:
    if name in (BENCH, WRK):
        return (2, name)
    return (1 if "(shared)" in name or name == "prosody" else 0, name)
