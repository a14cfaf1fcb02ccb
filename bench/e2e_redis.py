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
what runs inside them is not counted again, nor is a pipeline's second command
(MONITOR does not mark pipelines: commands of one connection run back to back within
PIPELINE_GAP_S count as one). Round trips are also split by process, the client's port
matched to the socket a process of the suite holds, and by what was sent (command, or
EVALSHA and the script's SHA). HABLA_BENCH_MONITOR_LOG=<file> writes every command of
both windows there, led by the process that sent it ('+': pipelined with the one before).
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
from typing import Any

import redis

from libs.common.settings import Settings

# After the action: the gateway and the worker consume what the frontend published, and
# the work a unit sets off once per interval runs (the gateway's site refresh: the bot's
# summary and the rosters, every HABLA_GATEWAY_PRESENCE_INTERVAL_MS, 2 s by default).
# At 1 s that refresh fell inside some windows and not others: 100-200 commands of one
# refresh counted against 5 units (20-40 per unit) or not at all.
SETTLE_S = 2.5
# The suite's background (lease renewals, heartbeats, members' beats, sweeps) is measured
# over at least this long and scaled to the busy window: a window as short as the busy
# one catches a periodic job or not, and the difference swung the per-unit figures.
IDLE_MIN_S = 6.0
# Commands of one connection that Redis runs back to back within this long came in one
# read: a pipeline (one round trip), which MONITOR shows as separate commands. A
# client's next round trip takes far longer (reply, parse, event loop, next send).
PIPELINE_GAP_S = 50e-6
REDIS_PORT = 6379
# Set to a file name: every command of each measured window goes there (which key, who).
MONITOR_LOG = "HABLA_BENCH_MONITOR_LOG"


def _what(name: str, text: str) -> str:
    """A round trip's label: the command, or EVALSHA and its script's first 8 hex digits."""
    if name in ("EVALSHA", "EVALSHA_RO"):
        return f"{name} {text.split(' ', 2)[1].strip(chr(34))[:8]}"
    return name


@dataclass
class Seen:
    commands: collections.Counter[str] = field(default_factory=collections.Counter)
    # Round trips by the client's "address:port" (one connection).
    trips: collections.Counter[str] = field(default_factory=collections.Counter)
    # Round trips by (connection, what was sent: the command, or the script's SHA).
    sent: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # Every command naming our prefix, as MONITOR printed it (HABLA_BENCH_MONITOR_LOG).
    log: list[str] = field(default_factory=list)
    window_s: float = 0.0  # how long MONITOR watched


def _scaled(counts: collections.Counter[Any], by: float) -> collections.Counter[Any]:
    return collections.Counter({key: n * by for key, n in counts.items()})


def _watch(settings: Settings, seen: Seen, stop: threading.Event, ready: threading.Event) -> None:
    prefix = settings.redis_prefix
    keep_log = bool(os.environ.get(MONITOR_LOG))
    in_multi: dict[str, bool] = {}  # client -> a command of ours inside its open MULTI
    last: tuple[str, float] = ("", 0.0)  # the last command sent by a client (not a script's)
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
                at = float(command.get("time", 0.0))
                pipelined = False
                if not inside_script:
                    pipelined = last[0] == who and at - last[1] <= PIPELINE_GAP_S
                    last = (who, at)
                if not inside_script and name == "MULTI":
                    in_multi[who] = False
                    continue
                if not inside_script and name in ("EXEC", "DISCARD") and who in in_multi:
                    if in_multi.pop(who):
                        seen.trips[who] += 1
                        seen.sent[who, "MULTI"] += 1
                    continue
                if prefix not in text:
                    continue
                seen.commands[name] += 1
                if keep_log:
                    seen.log.append(f"{at:.6f} {who} {'+' if pipelined else ''}{text[:200]}")
                if inside_script:
                    continue
                if who in in_multi:
                    in_multi[who] = True
                elif not pipelined:
                    seen.trips[who] += 1
                    seen.sent[who, _what(name, text)] += 1
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
    began = time.monotonic()
    await work()
    await asyncio.sleep(SETTLE_S)
    stop.set()
    seen.window_s = time.monotonic() - began
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
    # Of them, by process and what was sent (command, or EVALSHA and the script's SHA).
    sent_by_process: dict[str, dict[str, float]] = field(default_factory=dict)


async def commands_per(
    settings: Settings, action: Callable[[], Awaitable[None]], times: int, pids: Mapping[str, int] | None = None
) -> PerUnit:
    """Run ``action`` ``times`` times under MONITOR: commands (by name) and round trips
    per action, less what the suite sends by itself in as long a window (heartbeats,
    sweeps, leases: their rate over at least IDLE_MIN_S, times the busy window). The busy
    window lasts SETTLE_S past the last unit, so work a unit sets off for later (the
    gateway's coalesced site refresh) is counted, shared by the ``times`` units.
    ``pids``: processes to split the round trips by."""
    elapsed = 0.0

    async def work() -> None:
        nonlocal elapsed
        began = time.monotonic()
        for _ in range(times):
            await action()
        elapsed = time.monotonic() - began

    busy = await _monitored(settings, work)
    owners = _connection_owners(pids or {})
    idle = await _monitored(settings, lambda: asyncio.sleep(max(elapsed, IDLE_MIN_S - SETTLE_S)))
    owners.update(_connection_owners(pids or {}))
    if log_to := os.environ.get(MONITOR_LOG):
        _write_log(Path(log_to), busy, idle, owners, f"{times} units, {elapsed:.3f} s + {SETTLE_S} s")
    scale = busy.window_s / idle.window_s if idle.window_s else 1.0
    busy.commands.subtract(_scaled(idle.commands, scale))
    busy.trips.subtract(_scaled(idle.trips, scale))
    busy.sent.subtract(_scaled(idle.sent, scale))
    by_process: collections.Counter[str] = collections.Counter()
    for who, n in busy.trips.items():
        by_process[owners.get(who.rsplit(":", 1)[-1], "other")] += n
    sent: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for (who, what), n in busy.sent.items():
        sent[owners.get(who.rsplit(":", 1)[-1], "other")][what] += n
    return PerUnit(
        {name: n / times for name, n in busy.commands.most_common() if n >= 0.5},
        max(sum(busy.trips.values()), 0) / times,
        {name: max(n, 0) / times for name, n in sorted(by_process.items())},
        {name: {what: n / times for what, n in counts.most_common() if n > 0} for name, counts in sorted(sent.items())},
    )


def _write_log(path: Path, busy: Seen, idle: Seen, owners: Mapping[str, str], title: str) -> None:
    """Both windows' commands, each line led by the process that sent it ('?': unknown)."""

    def lines(seen: Seen) -> list[str]:
        return [f"{owners.get(line.split()[1].rsplit(':', 1)[-1], '?')} {line}\n" for line in seen.log]

    with path.open("a") as out:
        out.write(f"== busy ({title}, {busy.window_s:.2f} s)\n")
        out.writelines(lines(busy))
        out.write(f"== idle ({idle.window_s:.2f} s)\n")
        out.writelines(lines(idle))


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
    """Commands and round trips per unit; then, on lines of their own, each process's
    round trips and what they were (command, or EVALSHA and the script's SHA prefix)."""
    parts = ", ".join(f"{name} {n:.1f}" for name, n in counts.commands.items())
    own = counts.trips_by_process.get(process, 0.0)
    out = [f"{sum(counts.commands.values()):5.1f}  {counts.trips:4.1f} ({process} {own:3.1f})  ({parts})"]
    for name, trips in counts.trips_by_process.items():
        if trips < 0.05:
            continue
        what = ", ".join(f"{w} {n:.1f}" for w, n in counts.sent_by_process.get(name, {}).items() if n >= 0.05)
        out.append(f"{'':30}{name:<18} {trips:5.1f} round trips  ({what})")
    return "\n".join(out)
