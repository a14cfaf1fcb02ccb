"""Redis commands and round trips per unit of work, counted with MONITOR.

A page view or a chat line costs the suite a number of Redis round trips (the
frontend's, and the gateway's and worker's as they consume what it published); each
is a syscall pair and an event-loop wake-up on both sides, which is what the profile
says the time goes to. MONITOR shows every command of every client; only those naming
this run's key prefix are counted, so other runs on the shared Redis do not count.
MONITOR slows Redis down, so it is on only around these few requests, before the
measured phases (nothing queued from them is still being worked off).

Commands count what Redis executes, those a Lua script runs included. Round trips
count what clients sent and waited for: a script is one, a MULTI … EXEC is one, and
what runs inside them is not counted again (a pipeline without MULTI still counts
each command: MONITOR cannot tell it apart). Round trips are also split by process,
the client's port matched to the socket a process of the suite holds.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

from libs.common.settings import Settings

# After the action: the gateway and the worker consume what the frontend published.
SETTLE_S = 1.0
REDIS_PORT = 6379


@dataclass
class Seen:
    commands: collections.Counter[str] = field(default_factory=collections.Counter)
    # Round trips by the client's "address:port" (one connection).
    trips: collections.Counter[str] = field(default_factory=collections.Counter)


def _watch(settings: Settings, seen: Seen, stop: threading.Event, ready: threading.Event) -> None:
    prefix = settings.redis_prefix
    in_multi: dict[str, bool] = {}  # client -> a command of ours inside its open MULTI
    client = redis.Redis.from_url(settings.redis_url)
    try:
        with client.monitor() as monitor:  # type: ignore[no-untyped-call]
            ready.set()
            for command in monitor.listen():
                if stop.is_set():
                    return
                text = str(command.get("command", ""))
                name = text.split(" ", 1)[0].upper()
                who = f"{command.get('client_address')}:{command.get('client_port')}"
                inside_script = command.get("client_type") == "lua" or command.get("client_address") == "lua"
                if not inside_script and name == "MULTI":
                    in_multi[who] = False
                    continue
                if not inside_script and name in ("EXEC", "DISCARD") and who in in_multi:
                    if in_multi.pop(who):
                        seen.trips[who] += 1
                    continue
                if prefix not in text:
                    continue
                seen.commands[name] += 1
                if inside_script:
                    continue
                if who in in_multi:
                    in_multi[who] = True
                else:
                    seen.trips[who] += 1
    finally:
        client.close()


async def _monitored(settings: Settings, work: Callable[[], Awaitable[None]]) -> Seen:
    """Commands and round trips naming our prefix while ``work`` runs and SETTLE_S after."""
    seen = Seen()
    stop = threading.Event()
    ready = threading.Event()
    thread = threading.Thread(target=_watch, args=(settings, seen, stop, ready), daemon=True)
    thread.start()
    await asyncio.to_thread(ready.wait, 10)
    await work()
    await asyncio.sleep(SETTLE_S)
    stop.set()
    waker = redis.Redis.from_url(settings.redis_url)  # MONITOR returns on the next command anywhere
    waker.ping()
    waker.close()
    await asyncio.to_thread(thread.join, 10)
    return seen


@dataclass
class PerUnit:
    commands: dict[str, float]  # by command name
    trips: float  # every client's round trips
    trips_by_process: dict[str, float]  # of them, by process name


async def commands_per(
    settings: Settings, action: Callable[[], Awaitable[None]], times: int, pids: Mapping[str, int] | None = None
) -> PerUnit:
    """Run ``action`` ``times`` times under MONITOR: commands (by name) and round trips
    per action, less what the suite sends by itself in as long a window (heartbeats,
    sweeps, leases). ``pids``: processes to split the round trips by."""
    elapsed = 0.0

    async def work() -> None:
        nonlocal elapsed
        began = time.monotonic()
        for _ in range(times):
            await action()
        elapsed = time.monotonic() - began

    busy = await _monitored(settings, work)
    owners = _connection_owners(pids or {})
    idle = await _monitored(settings, lambda: asyncio.sleep(elapsed))
    busy.commands.subtract(idle.commands)
    busy.trips.subtract(idle.trips)
    by_process: collections.Counter[str] = collections.Counter()
    for who, n in busy.trips.items():
        by_process[owners.get(who.rsplit(":", 1)[-1], "other")] += n
    return PerUnit(
        {name: n / times for name, n in busy.commands.most_common() if n > 0},
        max(sum(busy.trips.values()), 0) / times,
        {name: max(n, 0) / times for name, n in sorted(by_process.items())},
    )


def _connection_owners(pids: Mapping[str, int]) -> dict[str, str]:
    """Local port of each TCP connection to Redis -> the name of the process holding it."""
    ports: dict[str, str] = {}  # socket inode -> local port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if int(cols[2].rsplit(":", 1)[1], 16) == REDIS_PORT:
                ports[f"socket:[{cols[9]}]"] = str(int(cols[1].rsplit(":", 1)[1], 16))
    owners: dict[str, str] = {}
    for name, pid in pids.items():
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                port = ports.get(os.readlink(fd))
            except OSError:
                continue
            if port is not None:
                owners[port] = name
    return owners


def describe(counts: PerUnit, process: str = "rpc_frontend") -> str:
    parts = ", ".join(f"{name} {n:.1f}" for name, n in counts.commands.items())
    own = counts.trips_by_process.get(process, 0.0)
    return f"{sum(counts.commands.values()):5.1f}  {counts.trips:4.1f} ({process} {own:3.1f})  ({parts})"
