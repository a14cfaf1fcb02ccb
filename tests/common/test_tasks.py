"""cancel_and_wait: tasks that lose (swallow) a cancellation still end, and a task
that never ends is given up on instead of hanging the stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from libs.common.tasks import cancel_and_wait


async def swallows_first_cancel(swallowed: asyncio.Event) -> None:
    """As a listener whose cancel was lost inside asyncio.wait_for (Python 3.11,
    gh-86296): the first cancellation is gone and the task listens on."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        swallowed.set()
    await asyncio.sleep(3600)


async def never_stops(release: asyncio.Event) -> None:
    while not release.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


async def test_plain_cancel_and_bounded_wait_leave_a_swallowing_task_running() -> None:
    """What the helper is for: one cancel and a bounded wait do not stop it."""
    swallowed = asyncio.Event()
    task = asyncio.create_task(swallows_first_cancel(swallowed))
    await asyncio.sleep(0)
    task.cancel()
    _, pending = await asyncio.wait({task}, timeout=0.5)
    assert pending == {task} and swallowed.is_set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_task_that_swallows_its_first_cancel_is_cancelled_again() -> None:
    swallowed = asyncio.Event()
    tasks = {asyncio.create_task(swallows_first_cancel(swallowed)), asyncio.create_task(asyncio.sleep(3600))}
    await asyncio.sleep(0)
    assert await cancel_and_wait(tasks, limit_s=5.0, recancel_s=0.05) == set()
    assert swallowed.is_set()
    assert all(task.cancelled() for task in tasks)


async def test_a_task_that_never_stops_is_returned_after_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    stubborn = asyncio.create_task(never_stops(release))
    polite = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="libs.common.tasks"):
        assert await cancel_and_wait([stubborn, polite], limit_s=0.5, recancel_s=0.1) == {stubborn}
    assert polite.cancelled() and not stubborn.done()
    assert any(record.getMessage() == "background task did not stop in time" for record in caplog.records)
    release.set()
    stubborn.cancel()
    await asyncio.gather(stubborn, return_exceptions=True)


async def test_failed_and_finished_tasks_are_not_stuck(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(fail())
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="libs.common.tasks"):
        assert await cancel_and_wait([failed, finished]) == set()
    assert any(record.getMessage() == "background task had failed" for record in caplog.records)
    assert await cancel_and_wait([]) == set()
