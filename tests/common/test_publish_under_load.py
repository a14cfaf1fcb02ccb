"""Publishing from a busy process: the confirms must keep up with the event loop.

A gateway under machine load (10-30 on 2 cores) logged "RabbitMQ did not confirm within
5 s" for every publish for 1-2 minutes while the broker and other processes were fine.
One aiormq channel hands its publish lock on one event-loop turn at a time, and aio-pika
held it until the writer drained the frame (~3.5 turns a publish): a busy loop caps a
channel at a handful of publishes a second, and once the lock's queue is 5 s long every
publish times out (see messaging.PUBLISH_CHANNELS). Here the loop is made slow on purpose
(tasks that block it for 2 ms each turn) and the real broker confirms.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

import pytest

from libs.common import messaging, topology
from libs.common.messaging import BrokerUnavailable, Envelope
from tests.common.test_messaging import MakeBus, _spec
from tests.factories import chat_message


@contextlib.asynccontextmanager
async def _busy_loop(tasks: int = 10, block_s: float = 0.002) -> AsyncIterator[None]:
    """Each loop turn takes at least tasks * block_s (a process with much to do)."""
    stop = asyncio.Event()

    async def hog() -> None:
        while not stop.is_set():
            time.sleep(block_s)  # noqa: ASYNC251 (blocks the loop, as CPU-bound work does)
            await asyncio.sleep(0)

    hogs = [asyncio.create_task(hog()) for _ in range(tasks)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*hogs)


async def test_a_burst_from_a_busy_loop_is_confirmed_in_time(make_bus: MakeBus) -> None:
    """200 publishes at once from a loop whose turns take >= 20 ms: every one confirmed,
    none "did not confirm within PUBLISH_TIMEOUT_S" (before: 137 of 200 did; now the
    burst takes 1.8 s at load 7, printed, not asserted: benchmarks measure)."""
    bus = await make_bus("busy")
    spec = _spec("busy")
    received: set[str] = set()
    everything = asyncio.Event()

    async def handler(envelope: Envelope) -> None:
        received.add(envelope.message_id)
        if len(received) == 200:
            everything.set()

    await bus.consume(spec, handler)  # in the same process, as the gateway does
    sent = [chat_message(f"line {i}") for i in range(200)]
    async with _busy_loop():
        started = time.monotonic()
        results = await asyncio.gather(
            *(bus.publish(topology.VISITOR, "busy.message", m) for m in sent), return_exceptions=True
        )
        took = time.monotonic() - started
    print(f"200 publishes from a busy loop: {took:.2f} s")
    failed = [r for r in results if isinstance(r, BaseException)]
    # Each publish has its own PUBLISH_TIMEOUT_S: a burst stuck behind one channel's
    # lock fails here, as it failed in the gateway.
    assert not failed, f"{len(failed)} of 200 failed in {took:.1f} s, e.g. {failed[0]!r}"
    await asyncio.wait_for(everything.wait(), 30)
    assert received == {m.message_id for m in sent}


async def test_cancelled_and_timed_out_publishes_leave_the_channels_working(
    make_bus: MakeBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishes cancelled at every point (waiting for the lock, being written, awaiting the
    confirm) and timed out, nacked and returned ones among them, from a busy loop: the next
    publishes are confirmed (none left waiting behind a lock or confirm that never comes),
    and a slot whose publish timed out got a new channel."""
    bus = await make_bus("cancelled")
    spec = _spec("cancelled")
    await bus.consume(spec, lambda envelope: asyncio.sleep(0))
    side = await bus.connection.channel()
    full = await side.declare_queue(
        f"test.full.{spec.name}", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await full.bind(topology.VISITOR, "refused.message")
    monkeypatch.setattr(messaging, "RENEW_CHANNEL_AFTER_NACK_S", 0.05)
    rnd = random.Random(7)
    outcomes: dict[str, int] = {}

    async def one() -> None:
        key = rnd.choice(["cancelled.message", "refused.message", "nobody.message"])
        try:
            async with asyncio.timeout(rnd.choice([None, 0.001, 0.005, 0.02, 0.1])):
                await bus.publish(topology.VISITOR, key, chat_message())
            outcome = "confirmed"
        except TimeoutError:
            outcome = "cancelled"
        except BrokerUnavailable as exc:
            outcome = "timed out" if "did not confirm" in str(exc) else "nacked" if "nack" in str(exc) else str(exc)
        except Exception as exc:
            outcome = exc.__class__.__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async with _busy_loop():
        for timeout_s in (0.02, 1.0, 0.02, 1.0):  # rounds that time out, rounds nacked in time
            monkeypatch.setattr(messaging, "PUBLISH_TIMEOUT_S", timeout_s)
            await asyncio.gather(*(one() for _ in range(150)))
    monkeypatch.setattr(messaging, "PUBLISH_TIMEOUT_S", 5.0)
    assert outcomes.get("cancelled", 0) > 100, outcomes
    assert outcomes.get("timed out", 0) > 0 and outcomes.get("nacked", 0) > 0, outcomes
    for _ in range(5):  # each on the first channel: a broken one times out (BrokerUnavailable)
        await bus.publish(topology.VISITOR, "cancelled.message", chat_message())
    assert bus.channels_renewed > 0
    await asyncio.sleep(5.5)  # the replaced channels are closed after their grace
    await bus.ping()
    await bus.publish_all(topology.VISITOR, [("cancelled.message", chat_message()) for _ in range(20)])
    await full.delete()
    await side.close()
