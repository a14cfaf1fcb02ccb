"""Presence that never floods: per-operator coalescing with a stanza ceiling.

Every visitor presence meant for an operator (page changes of followed or chatting
visitors, the site bot's summary) goes through here. For each (operator, sender) only
the latest update is kept; one is sent at most once per ``interval`` per sender, and
at most ``ceiling`` presence stanzas reach one operator in any one-second window
(services.im_gateway.ceiling, shared with roster writes). 1,000
page views a second on a site thus cost each operator at most ``ceiling`` stanzas a
second: the rate limits that made Hab.la drop AIM and MSN are never hit.

Pure logic plus a flush loop; the clock is injectable for unit tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from services.im_gateway import metrics
from services.im_gateway.ceiling import Window, flush_every_tick
from services.im_gateway.outbox import Outbox, XmppUnavailable

log = logging.getLogger(__name__)


@dataclass
class Update:
    show: str | None
    status: str | None
    kind: str | None  # None = available, "unavailable"
    waiting_since: float


@dataclass
class _OperatorQueue:
    pending: dict[str, Update] = field(default_factory=dict)  # sender jid -> latest
    last_sent: dict[str, float] = field(default_factory=dict)  # sender jid -> when
    window: Window = field(default_factory=Window)  # sends in the last second (the ceiling)


class PresenceCoalescer:
    def __init__(
        self, outbox: Outbox, interval_s: float, ceiling_per_s: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._outbox = outbox
        self.interval_s = interval_s
        self.ceiling = max(1, ceiling_per_s)
        self._clock = clock
        self._queues: dict[str, _OperatorQueue] = {}
        self._wake = asyncio.Event()
        # Called with (operator, send time) after each presence sent: measurement hook
        # for bench/bench_gateway.py (receive times there include client-side jitter).
        self.on_sent: Callable[[str, float], None] | None = None

    def update(
        self, operator: str, sender: str, *, show: str | None = None, status: str | None = None, kind: str | None = None
    ) -> None:
        """Queue a presence from ``sender`` to ``operator``; a newer one replaces it."""
        queue = self._queues.setdefault(operator, _OperatorQueue())
        previous = queue.pending.get(sender)
        if previous is not None:
            metrics.PRESENCE_COALESCED.inc()
        since = previous.waiting_since if previous else self._clock()
        queue.pending[sender] = Update(show, status, kind, since)
        self._wake.set()

    def forget(self, operator: str, sender: str) -> None:
        """Drop a pending update (the operator stopped following the visitor)."""
        queue = self._queues.get(operator)
        if queue:
            queue.pending.pop(sender, None)

    def pending(self, operator: str) -> int:
        queue = self._queues.get(operator)
        return len(queue.pending) if queue else 0

    def flush(self) -> int:
        """Send what is due within every ceiling; returns how many were sent."""
        now = self._clock()
        sent = 0
        for operator, queue in list(self._queues.items()):
            queue.window.slide(now)
            # Oldest waiting first; a stable sort keeps arrival order among equals.
            due = sorted(
                (
                    (update.waiting_since, sender)
                    for sender, update in queue.pending.items()
                    if now - queue.last_sent.get(sender, -1e9) >= self.interval_s
                ),
                key=lambda item: item[0],
            )
            for _since, sender in due:
                if queue.window.full(self.ceiling):
                    metrics.PRESENCE_DEFERRED.inc()
                    break
                update = queue.pending[sender]
                try:
                    self._outbox.presence(sender, operator, show=update.show, status=update.status, kind=update.kind)
                except XmppUnavailable:
                    return sent  # keep everything pending until the stream is back
                del queue.pending[sender]
                queue.last_sent[sender] = now
                queue.window.add(now)
                sent += 1
                if self.on_sent is not None:
                    self.on_sent(operator, now)
            self._prune(queue, now)
            if (
                not queue.pending
                and not queue.window
                and all(now - at >= self.interval_s for at in queue.last_sent.values())
            ):
                del self._queues[operator]
        return sent

    def _prune(self, queue: _OperatorQueue, now: float) -> None:
        # last_sent only matters within one interval; drop older entries so memory
        # follows the number of active visitors, not of every visitor ever seen.
        if len(queue.last_sent) > 64:
            for sender, at in list(queue.last_sent.items()):
                if now - at >= self.interval_s and sender not in queue.pending:
                    del queue.last_sent[sender]

    async def run(self) -> None:
        """Flush every tick while anything is pending (until cancelled)."""
        await flush_every_tick(lambda: not self._queues, self._wake, self.flush, "presence")
