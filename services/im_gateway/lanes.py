"""Work in arrival order per key, different keys at once.

A visitor's lines must reach the operator in order, and an operator's lines must be
numbered in the order typed; two different visitors have nothing to wait for from
each other. Each key (visitor) gets a lane; lanes run concurrently, up to a limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from libs.common.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# How long close() waits for the lanes: a job's clean-up after its cancellation is short.
CLOSE_S = 3.0

Job = Callable[[], Awaitable[None]]


class Lanes:
    def __init__(self, limit: int) -> None:
        self._lanes: dict[str, deque[Job]] = {}
        self._free = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: str, job: Job) -> None:
        """Queue ``job`` behind the key's earlier jobs; waits while all lanes are busy."""
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(job)
            return
        await self._free.acquire()
        lane = self._lanes.get(key)  # another submit may have opened it meanwhile
        if lane is not None:
            self._free.release()
            lane.append(job)
            return
        self._lanes[key] = deque([job])
        task = asyncio.create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: str) -> None:
        lane = self._lanes[key]
        try:
            while lane:
                try:
                    await lane[0]()
                except Exception:  # one failing job must not stall the lane
                    log.exception("job failed", extra={"lane": key})
                lane.popleft()
        finally:
            del self._lanes[key]
            self._free.release()

    @property
    def busy(self) -> int:
        return len(self._lanes)

    async def close(self) -> None:
        # Bounded and cancelled again while running: a lane whose cancellation was lost
        # while Redis connected (Python 3.11, libs.common.tasks) would run on through
        # its queue, and an unbounded wait for it hold up the stop.
        await cancel_and_wait(self._tasks, CLOSE_S)
