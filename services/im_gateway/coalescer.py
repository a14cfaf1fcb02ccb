"""Presence that never floods: per-operator coalescing with a stanza ceiling.

Every visitor presence meant for an operator (page changes of followed or chatting
visitors, the site bot's summary) goes through here. For each (operator, sender) only
the latest update is kept; one is sent at most once per ``interval`` per sender, and
at most ``ceiling`` presence stanzas reach one operator in any one-second window (a
sliding window of send times, so bursts cannot double it at a window edge). 1,000
page views a second on a site thus cost each operator at most ``ceiling`` stanzas a
second: the rate limits that made Hab.la drop AIM and MSN are never hit.

Pure logic plus a flush loop; the clock is injectable for unit tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from services.im_gateway import metrics
from services.im_gateway.outbox import Outbox, XmppUnavailable

log = logging.getLogger(__name__)

# The flush loop wakes this often: adds at most 50 ms to a presence, and at the
# default ceiling (5/s, one per 200 ms) keeps the sends evenly spread.
TICK_S = 0.05
WINDOW_S = 1.0  # the ceiling is "per second"


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
    sent_at: deque[float] = field(default_factory=deque)  # send times within the window


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
            while queue.sent_at and now - queue.sent_at[0] >= WINDOW_S:
                queue.sent_at.popleft()
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
                if len(queue.sent_at) >= self.ceiling:
                    metrics.PRESENCE_DEFERRED.inc()
                    break
                update = queue.pending[sender]
                try:
                    self._outbox.presence(sender, operator, show=update.show, status=update.status, kind=update.kind)
                except XmppUnavailable:
                    return sent  # keep everything pending until the stream is back
                del queue.pending[sender]
                queue.last_sent[sender] = now
                queue.sent_at.append(now)
                sent += 1
                if self.on_sent is not None:
                    self.on_sent(operator, now)
            self._prune(queue, now)
            if (
                not queue.pending
                and not queue.sent_at
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
        while True:
            if not self._queues:
                self._wake.clear()
                await self._wake.wait()
            try:
                self.flush()
            except Exception:  # one bad stanza must not stop presence for everyone
                log.exception("presence flush failed")
            await asyncio.sleep(TICK_S)
