"""Redis commands per unit of work, counted with MONITOR.

A page view or a chat line costs the suite a number of Redis round trips (the
frontend's, and the gateway's and worker's as they consume what it published); each
is a syscall pair and an event-loop wake-up on both sides, which is what the profile
says the time goes to. MONITOR shows every command of every client; only those naming
this run's key prefix are counted, so other runs on the shared Redis do not count.
MONITOR slows Redis down, so it is on only around these few requests, before the
measured phases (nothing queued from them is still being worked off).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Awaitable, Callable

import redis

from libs.common.settings import Settings

# After the action: the gateway and the worker consume what the frontend published.
SETTLE_S = 1.0


async def _monitored(settings: Settings, work: Callable[[], Awaitable[None]]) -> collections.Counter[str]:
    """Commands naming our prefix, by name, while ``work`` runs and SETTLE_S after."""
    seen: collections.Counter[str] = collections.Counter()
    stop = threading.Event()
    ready = threading.Event()
    prefix = settings.redis_prefix

    def listen() -> None:
        client = redis.Redis.from_url(settings.redis_url)
        try:
            with client.monitor() as monitor:  # type: ignore[no-untyped-call]
                ready.set()
                for command in monitor.listen():
                    if stop.is_set():
                        return
                    text = str(command.get("command", ""))
                    if prefix in text:
                        seen[text.split(" ", 1)[0].upper()] += 1
        finally:
            client.close()

    thread = threading.Thread(target=listen, daemon=True)
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


async def commands_per(settings: Settings, action: Callable[[], Awaitable[None]], times: int) -> dict[str, float]:
    """Run ``action`` ``times`` times under MONITOR: commands (by name) per action, less
    what the suite sends by itself in as long a window (heartbeats, sweeps, leases)."""
    elapsed = 0.0

    async def work() -> None:
        nonlocal elapsed
        began = time.monotonic()
        for _ in range(times):
            await action()
        elapsed = time.monotonic() - began

    busy = await _monitored(settings, work)
    idle = await _monitored(settings, lambda: asyncio.sleep(elapsed))
    busy.subtract(idle)
    return {name: n / times for name, n in busy.most_common() if n > 0}


def describe(counts: dict[str, float]) -> str:
    parts = ", ".join(f"{name} {n:.1f}" for name, n in counts.items())
    return f"{sum(counts.values()):5.1f}  ({parts})"
