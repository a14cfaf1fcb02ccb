"""Batching by count and by time, with retry that never drops a batch (no AMQP here).

``add`` hands over an item; a background task calls ``flush(items)`` when
``max_size`` items are waiting or the oldest has waited ``max_wait_s``. A flush that
raises is retried with backoff, the same items, for as long as it takes: the archive's
flush acknowledges only after MySQL commits, so while MySQL is down nothing is
acknowledged, RabbitMQ stops sending once the prefetch window is full, and the backlog
drains when MySQL returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds between attempts at a failing flush: quick at first (a deadlock or a
# dropped connection heals at once), then every 5 s so a MariaDB restart of a few
# seconds costs one extra wait at most and a long outage does not hammer the server.
BACKOFF_S: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0)


class Batcher(Generic[T]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        max_size: int,
        max_wait_s: float,
        backoff_s: tuple[float, ...] = BACKOFF_S,
        name: str = "batch",
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._flush = flush
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._backoff_s = backoff_s
        self._name = name
        self._pending: list[tuple[float, T]] = []  # (monotonic time added, item)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._between_flushes = asyncio.Event()  # clear while a flush runs
        self._between_flushes.set()
        self.failures = 0  # consecutive failed flushes (health: > 0 means stuck)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-flusher")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, item: T) -> None:
        self._pending.append((time.monotonic(), item))
        if len(self._pending) == 1 or len(self._pending) >= self._max_size:
            self._wake.set()

    async def close(self, flush_remaining: bool = True, grace_s: float = 0.0) -> None:
        """Stop; a flush under way gets ``grace_s`` to finish (an email batch cut
        short could leave a mail sent but unrecorded); then one last flush of what
        is waiting (if it fails, it is dropped here and redelivered by the broker,
        since it was never acknowledged)."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                if grace_s > 0:
                    await asyncio.wait_for(self._between_flushes.wait(), grace_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while flush_remaining and self._pending:
            items = self._take()
            try:
                await self._flush(items)
            except Exception:
                log.warning("final flush failed; the broker will redeliver", extra={"batch": self._name})
                break

    def _take(self) -> list[T]:
        taken = self._pending[: self._max_size]
        del self._pending[: self._max_size]
        return [item for _, item in taken]

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if len(self._pending) < self._max_size:
                    remaining = self._pending[0][0] + self._max_wait_s - time.monotonic()
                    if remaining > 0:
                        try:
                            await asyncio.wait_for(self._wake.wait(), remaining)
                            self._wake.clear()
                            continue  # re-check size and age
                        except TimeoutError:
                            pass
                await self._flush_until_done(self._take())

    async def _flush_until_done(self, items: list[T]) -> None:
        attempt = 0
        while True:
            try:
                self._between_flushes.clear()
                try:
                    await self._flush(items)
                finally:
                    self._between_flushes.set()
                if self.failures:
                    log.info("flush succeeded again", extra={"batch": self._name, "after_failures": self.failures})
                self.failures = 0
                return
            except Exception as exc:  # any failure: keep the batch, back off, try again
                self.failures += 1
                delay = self._backoff_s[min(attempt, len(self._backoff_s) - 1)]
                log.warning(
                    "flush failed; retrying",
                    extra={"batch": self._name, "items": len(items), "retry_in_s": delay, "error": repr(exc)[:300]},
                )
                attempt += 1
                await asyncio.sleep(delay)
