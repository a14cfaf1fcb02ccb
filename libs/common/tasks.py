"""Stopping background tasks on Python 3.11, where a cancellation can be lost.

``asyncio.wait_for`` on 3.11 drops a cancellation that arrives just as its inner
future finishes (CPython gh-86296), and redis-py's connect sends through
``wait_for``: a listener cancelled while it subscribes or connects can swallow the
cancel and keep running. A plain ``task.cancel(); await task`` then hangs, and a
bounded wait gives up on a task that a second cancel would have stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

LIMIT_S = 5.0
# A task still running this long after its cancellation is cancelled again; a
# listener's own clean-up (closing a pub/sub, a channel) takes far less.
RECANCEL_S = 0.25


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], limit_s: float = LIMIT_S, recancel_s: float = RECANCEL_S
) -> set[asyncio.Future[Any]]:
    """Cancel ``tasks`` (tasks or futures) and wait for them, cancelling again every
    ``recancel_s`` those still running, for at most ``limit_s`` (a stuck call cannot
    hold up a stop for long). Logs the tasks that had failed and those that did not
    stop; returns the latter (empty when all ended)."""
    tasks = set(tasks)
    if not tasks:
        return set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    stuck = tasks
    while stuck and loop.time() < deadline:
        for task in stuck:
            task.cancel()
        _, stuck = await asyncio.wait(stuck, timeout=min(recancel_s, deadline - loop.time()))
    for task in tasks - stuck:
        if not task.cancelled() and task.exception() is not None:
            log.warning("background task had failed", extra={"error": repr(task.exception())[:300]})
    for task in stuck:
        log.warning("background task did not stop in time", extra={"task": repr(task)[:300]})
    return stuck
