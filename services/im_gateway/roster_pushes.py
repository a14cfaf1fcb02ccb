"""Roster writes that never flood: per-operator coalescing with a push ceiling.

A roster write (XEP-0356) makes the operator's server push the change to every
resource of the operator, so it costs like a presence, and the same rule applies: the
ceiling that made Hab.la drop AIM and MSN. For each (operator, contact) only the
latest wanted state is kept (a visitor who arrives and leaves within a tick costs
nothing); at most ``ceiling`` writes start per operator in any one-second window
(services.im_gateway.ceiling, shared with presence); one write per (operator, contact) is in flight at a
time, so a newer state never overtakes an older one on the wire.

Pure logic plus a flush loop; the clock is injectable for unit tests, the write is a
coroutine function that returns once the server answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.im_gateway import metrics
from services.im_gateway.ceiling import Window, flush_every_tick

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """A contact as the operator's roster should have it (subscription "both")."""

    jid: str
    name: str
    group: str
    site_id: str


Write = Callable[[str, str, Item | None], Awaitable[None]]  # (operator, jid, item or None = remove)


@dataclass
class _OperatorQueue:
    pending: dict[str, Item | None] = field(default_factory=dict)  # jid -> wanted (None: remove)
    since: dict[str, float] = field(default_factory=dict)  # jid -> waiting since
    in_flight: set[str] = field(default_factory=set)
    window: Window = field(default_factory=Window)  # writes started in the last second (the ceiling)


class RosterPushes:
    def __init__(self, write: Write, ceiling_per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self.ceiling = max(1, ceiling_per_s)
        self._clock = clock
        self._queues: dict[str, _OperatorQueue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        # Called with (operator, start time) for each write started: measurement hook
        # for bench/bench_roster.py.
        self.on_push: Callable[[str, float], None] | None = None

    def want(self, operator: str, jid: str, item: Item | None) -> None:
        """The operator's roster should hold ``item`` for ``jid`` (None: not hold it)."""
        queue = self._queues.setdefault(operator, _OperatorQueue())
        if jid in queue.pending:
            metrics.ROSTER_COALESCED.inc()
        queue.pending[jid] = item
        queue.since.setdefault(jid, self._clock())
        self._wake.set()

    def cancel(self, operator: str, jid: str) -> None:
        queue = self._queues.get(operator)
        if queue:
            queue.pending.pop(jid, None)
            queue.since.pop(jid, None)

    def pending_additions(self, operator: str, site_id: str) -> set[str]:
        queue = self._queues.get(operator)
        if not queue:
            return set()
        return {jid for jid, item in queue.pending.items() if item is not None and item.site_id == site_id}

    def busy(self, operator: str, jid: str) -> bool:
        """A write for ``jid`` is waiting or under way."""
        queue = self._queues.get(operator)
        return queue is not None and (jid in queue.pending or jid in queue.in_flight)

    def in_flight(self, operator: str) -> int:
        queue = self._queues.get(operator)
        return len(queue.in_flight) if queue else 0

    def pending(self, operator: str) -> int:
        queue = self._queues.get(operator)
        return len(queue.pending) if queue else 0

    def flush(self) -> int:
        """Start the writes that are due within every ceiling; returns how many started."""
        now = self._clock()
        started = 0
        for operator, queue in list(self._queues.items()):
            queue.window.slide(now)
            due = sorted(
                (queue.since[jid], jid) for jid in queue.pending if jid not in queue.in_flight
            )  # oldest waiting first
            for _since, jid in due:
                if queue.window.full(self.ceiling):
                    metrics.ROSTER_DEFERRED.inc()
                    break
                item = queue.pending.pop(jid)
                queue.since.pop(jid, None)
                queue.in_flight.add(jid)
                queue.window.add(now)
                started += 1
                metrics.ROSTER_PUSHES.inc()
                if self.on_push is not None:
                    self.on_push(operator, now)
                task = asyncio.ensure_future(self._run(operator, jid, item))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if not queue.pending and not queue.in_flight and not queue.window:
                del self._queues[operator]
        return started

    async def _run(self, operator: str, jid: str, item: Item | None) -> None:
        # What a failed write means (fall back, retry) is the writer's decision.
        try:
            await self._write(operator, jid, item)
        except Exception:
            log.exception("roster write failed", extra={"operator": operator, "contact": jid})
        finally:
            queue = self._queues.setdefault(operator, _OperatorQueue())
            queue.in_flight.discard(jid)
            self._wake.set()

    async def run(self) -> None:
        """Flush every tick while anything is pending (until cancelled)."""
        try:
            await flush_every_tick(lambda: not self._queues, self._wake, self.flush, "roster")
        finally:
            for task in list(self._tasks):
                task.cancel()
