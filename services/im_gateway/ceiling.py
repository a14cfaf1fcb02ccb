"""The per-operator ceiling shared by presence (coalescer) and roster writes (roster_pushes).

Both cost the operator's server a stanza to every resource, so both obey the same rule,
the one that made Hab.la drop AIM and MSN: at most N per operator in any one-second
window. The window slides (the send times of the last second are kept), so a burst
cannot double the ceiling at a fixed window's edge. Each user keeps one Window per
operator and a flush loop that wakes every TICK_S while anything waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

# The flush loops wake this often: adds at most 50 ms to a presence or a roster change,
# and at the default ceilings (5/s, one per 200 ms) keeps the sends evenly spread.
TICK_S = 0.05
WINDOW_S = 1.0  # the ceiling is "per second"


class Window:
    """Send times within the last WINDOW_S for one operator."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def slide(self, now: float) -> None:
        """Forget the sends older than a second before ``now``."""
        while self._times and now - self._times[0] >= WINDOW_S:
            self._times.popleft()

    def full(self, ceiling: int) -> bool:
        """Whether ``ceiling`` sends are in the window already (after ``slide``)."""
        return len(self._times) >= ceiling

    def add(self, now: float) -> None:
        self._times.append(now)

    def __bool__(self) -> bool:
        """Anything sent within the window (as of the last ``slide``)."""
        return bool(self._times)


async def flush_every_tick(
    idle: Callable[[], bool], wake: asyncio.Event, flush: Callable[[], object], what: str
) -> None:
    """Call ``flush`` every TICK_S while there is work; sleep on ``wake`` while ``idle()``.
    A failing flush is logged and the loop goes on: one bad stanza or write must not
    stop the others for everyone. Runs until cancelled."""
    while True:
        if idle():
            wake.clear()
            await wake.wait()
        try:
            flush()
        except Exception:
            log.exception("%s flush failed", what)
        await asyncio.sleep(TICK_S)
