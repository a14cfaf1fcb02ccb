"""The messaging façade against the real RabbitMQ (a vhost of this run's own)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import pytest
import redis.exceptions

from libs.common import codec, messaging, topology
from libs.common.messaging import REASON_HEADER, SOURCE_HEADER, BrokerUnavailable, Bus, Envelope, Permanent
from libs.common.settings import Settings
from libs.common.topology import QueueSpec
from tests.factories import chat_message

MakeBus = Callable[[str], Awaitable[Bus]]


def _spec(name: str) -> QueueSpec:
    # A queue per test, bound to a routing key only this test uses.
    return QueueSpec(f"test.{name}.{uuid.uuid4().hex[:6]}", ((topology.VISITOR, f"{name}.message"),))


class _Unconfirmed:
    """The bus's first ``left`` raw publishes (its retries and dead letters) fail as an
    unconfirmed publish would; the rest go to the broker."""

    def __init__(self, bus: Bus, left: int) -> None:
        self.left = left
        self._publish_raw = bus.publish_raw

    async def __call__(self, *args: Any, **kwargs: Any) -> None:
        if self.left:
            self.left -= 1
            raise BrokerUnavailable("RabbitMQ did not confirm within 5 s")
        await self._publish_raw(*args, **kwargs)


def _unconfirmed(bus: Bus, monkeypatch: pytest.MonkeyPatch, times: int) -> _Unconfirmed:
    refusing = _Unconfirmed(bus, times)
    monkeypatch.setattr(bus, "publish_raw", refusing)
    return refusing


async def _dead_letters(
    bus: Bus, spec: QueueSpec, count: int, wait_s: float = 10
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    channel = await bus.connection.channel()
    queue = await channel.get_queue(spec.dead_letter_queue)
    found: list[aio_pika.abc.AbstractIncomingMessage] = []
    deadline = time.monotonic() + wait_s
    while len(found) < count and time.monotonic() < deadline:
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        await message.ack()
        found.append(message)
    await channel.close()
    return found


async def test_struct_published_with_confirm_is_consumed(make_bus: MakeBus) -> None:
    bus = await make_bus("publisher")
    spec = _spec("roundtrip")
    received: asyncio.Queue[Envelope] = asyncio.Queue()

    async def handler(envelope: Envelope) -> None:
        await received.put(envelope)

    await bus.consume(spec, handler)
    sent = chat_message("round trip")
    message_id = await bus.publish(topology.VISITOR, "roundtrip.message", sent)
    got = await asyncio.wait_for(received.get(), 30)
    assert got.struct == sent
    assert (got.type_name, got.message_id, got.routing_key) == ("ChatMessage", sent.message_id, "roundtrip.message")
    assert message_id == sent.message_id


async def test_unroutable_mandatory_publish_raises(make_bus: MakeBus) -> None:
    bus = await make_bus("publisher")
    with pytest.raises(aio_pika.exceptions.DeliveryError):
        await bus.publish(topology.DELIVER, "no-such-frontend", chat_message())
    await bus.publish(topology.DELIVER, "no-such-frontend", chat_message(), mandatory=False)


async def test_a_nacked_publish_is_retried_on_a_new_channel(make_bus: MakeBus, monkeypatch: pytest.MonkeyPatch) -> None:
    """RabbitMQ 3.10 nacks every publish of a channel to a quorum queue whose first
    publish there came while the queue's leader node had just died (see
    messaging.RENEW_CHANNEL_AFTER_NACK_S; tests/cluster/test_rabbit_failover.py shows it on a
    cluster). Here a queue that refuses everything (max length 0, reject-publish) nacks."""
    monkeypatch.setattr(messaging, "PUBLISH_TIMEOUT_S", 0.5)  # the old channel's grace
    # The renewal interval is switched between "long past" and "not yet", rather than
    # raced with sleeps: a loaded machine's slow nack round trip outlasted a 0.5 s one.
    monkeypatch.setattr(messaging, "RENEW_CHANNEL_AFTER_NACK_S", 0.0)
    bus = await make_bus("publisher")
    key = f"full{uuid.uuid4().hex[:6]}.message"
    side = await bus.connection.channel()
    full = await side.declare_queue(
        f"test.full.{uuid.uuid4().hex[:6]}", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await full.bind(topology.VISITOR, key)
    spec = _spec("afternack")
    received: asyncio.Queue[Envelope] = asyncio.Queue()

    async def handler(envelope: Envelope) -> None:
        await received.put(envelope)

    await bus.consume(spec, handler)
    first = bus._publishers[0].channel  # one publish at a time: always the first slot
    with pytest.raises(BrokerUnavailable, match="nack"):
        await bus.publish(topology.VISITOR, key, chat_message())
    assert bus.channels_renewed == 1 and bus._publishers[0].channel is not first
    monkeypatch.setattr(messaging, "RENEW_CHANNEL_AFTER_NACK_S", 3600.0)
    with pytest.raises(BrokerUnavailable, match="nack"):  # within the interval: the same channel
        await bus.publish(topology.VISITOR, key, chat_message())
    assert bus.channels_renewed == 1
    sent = chat_message("on the new channel")
    await bus.publish(topology.VISITOR, "afternack.message", sent)
    assert (await asyncio.wait_for(received.get(), 30)).struct == sent
    deadline = time.monotonic() + 30
    while not first.is_closed:  # once its publishes had their time (PUBLISH_TIMEOUT_S)
        assert time.monotonic() < deadline, "the replaced channel was never closed"
        await asyncio.sleep(0.05)
    monkeypatch.setattr(messaging, "RENEW_CHANNEL_AFTER_NACK_S", 0.0)  # the interval is over
    with pytest.raises(BrokerUnavailable, match="nack"):
        await bus.publish(topology.VISITOR, key, chat_message())
    assert bus.channels_renewed == 2
    await bus.ping()
    await full.delete()
    await side.close()


async def test_poison_message_is_dead_lettered_with_reason_and_consumer_goes_on(make_bus: MakeBus) -> None:
    bus = await make_bus("poison")
    spec = _spec("poison")
    handled: asyncio.Queue[str] = asyncio.Queue()

    async def handler(envelope: Envelope) -> None:
        await handled.put(envelope.struct.body)

    await bus.consume(spec, handler)
    for body, type_name in ((b"\xff\xfe garbage", "ChatMessage"), (b"{}", "NotAStruct"), (b"", None)):
        await bus.publish_raw(
            topology.VISITOR, "poison.message", aio_pika.Message(body, type=type_name, message_id="p")
        )
    await bus.publish(topology.VISITOR, "poison.message", chat_message("after the poison"))

    assert await asyncio.wait_for(handled.get(), 30) == "after the poison"
    dead = await _dead_letters(bus, spec, 3)
    reasons = [str((m.headers or {})[REASON_HEADER]) for m in dead]
    assert len(dead) == 3
    assert all(r.startswith("undecodable:") for r in reasons), reasons
    assert any("cannot decode ChatMessage" in r for r in reasons)
    assert any("unknown message type 'NotAStruct'" in r for r in reasons)
    assert {(m.headers or {})[SOURCE_HEADER] for m in dead} == {spec.name}
    assert dead[0].body == b"\xff\xfe garbage"  # the original bytes, for a person to inspect


async def test_a_dead_letter_the_broker_does_not_confirm_is_requeued_and_the_consumer_goes_on(
    make_bus: MakeBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More unconfirmed dead letters than the prefetch: each poison message is given
    back and dead-lettered on its next delivery; the consumer never stalls."""
    sender, bus = await make_bus("sender"), await make_bus("slow-confirms")
    spec = _spec("unconfirmed")
    handled: asyncio.Queue[str] = asyncio.Queue()
    failures = _unconfirmed(bus, monkeypatch, 3)

    async def handler(envelope: Envelope) -> None:
        await handled.put(envelope.struct.body)

    await bus.consume(spec, handler, prefetch=2)
    for k in range(3):
        await sender.publish_raw(
            topology.VISITOR,
            "unconfirmed.message",
            aio_pika.Message(b"\xff garbage", type="ChatMessage", message_id=f"p{k}"),
        )
    await sender.publish(topology.VISITOR, "unconfirmed.message", chat_message("after the poison"))

    assert await asyncio.wait_for(handled.get(), 30) == "after the poison"
    dead = await _dead_letters(bus, spec, 3)
    assert sorted(str(m.message_id) for m in dead) == ["p0", "p1", "p2"]
    assert all(str((m.headers or {})[REASON_HEADER]).startswith("undecodable:") for m in dead)
    assert failures.left == 0


async def test_a_self_settling_consumers_unconfirmed_dead_letter_is_requeued(
    make_bus: MakeBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manual consumer that settles in a task of its own and only logs a failure (as
    the email consumer does): an unconfirmed dead letter is requeued, not left unacked."""
    sender, bus = await make_bus("sender"), await make_bus("self-settling")
    spec = _spec("selfsettle")
    failures = _unconfirmed(bus, monkeypatch, 2)
    settling: set[asyncio.Task[None]] = set()

    async def settle(envelope: Envelope) -> None:
        with contextlib.suppress(Exception):  # "the broker will redeliver it"
            await envelope.dead_letter("rejected: no such site")

    async def handler(envelope: Envelope) -> None:
        task = asyncio.create_task(settle(envelope))
        settling.add(task)
        task.add_done_callback(settling.discard)

    await bus.consume(spec, handler, manual=True, prefetch=2)
    for k in range(2):
        await sender.publish(topology.VISITOR, "selfsettle.message", chat_message(f"line {k}"))
    dead = await _dead_letters(bus, spec, 2)
    assert sorted(codec.decode("ChatMessage", m.body).body for m in dead) == ["line 0", "line 1"]
    assert failures.left == 0


async def test_failing_handler_is_retried_with_backoff_then_dead_lettered(
    make_bus: MakeBus, settings: Settings
) -> None:
    bus = await make_bus("retry")
    spec = _spec("retry")
    attempts: list[tuple[int, float]] = []

    async def handler(envelope: Envelope) -> None:
        attempts.append((envelope.attempt, time.monotonic()))
        raise RuntimeError("database unavailable")

    await bus.consume(spec, handler)
    await bus.publish(topology.VISITOR, "retry.message", chat_message())
    dead = await _dead_letters(bus, spec, 1)

    delays = settings.retry_delays_ms  # (100, 200) in tests
    assert [a for a, _ in attempts] == list(range(len(delays) + 1))
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(attempts)]
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay / 1000 * 0.9, f"retried after {gap:.3f}s, before its {delay} ms backoff"
    reason = str((dead[0].headers or {})[REASON_HEADER])
    assert reason.startswith(f"gave up after {len(delays) + 1} attempts: RuntimeError: database unavailable")


async def test_handler_that_recovers_on_retry_is_acked_once(make_bus: MakeBus) -> None:
    bus = await make_bus("recover")
    spec = _spec("recover")
    done: asyncio.Queue[int] = asyncio.Queue()

    async def handler(envelope: Envelope) -> None:
        if envelope.attempt == 0:
            raise ConnectionError("flaky")
        await done.put(envelope.attempt)

    await bus.consume(spec, handler)
    await bus.publish(topology.VISITOR, "recover.message", chat_message())
    assert await asyncio.wait_for(done.get(), 30) == 1
    assert await _dead_letters(bus, spec, 1, wait_s=0.5) == []


@pytest.mark.parametrize("manual", [False, True])
async def test_an_outage_longer_than_every_retry_delay_is_waited_out(make_bus: MakeBus, manual: bool) -> None:
    """Redis down for longer than all retry delays together: the line is still handled
    once the outage ends, never dead-lettered (both for handlers that raise and for
    handlers that settle their own messages, like the gateway's)."""
    bus = await make_bus("outage")
    spec = _spec("outage")
    failures = 6  # more than the 2 retry delays of the test settings
    done: asyncio.Queue[int] = asyncio.Queue()
    seen: list[int] = []

    async def handler(envelope: Envelope) -> None:
        seen.append(envelope.attempt)
        if len(seen) <= failures:
            error = redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379")
            if not manual:
                raise error
            try:
                raise error
            except redis.exceptions.ConnectionError as exc:
                await envelope.retry(f"{exc}")
                return
        await done.put(len(seen))
        if manual:
            await envelope.ack()

    await bus.consume(spec, handler, manual=manual)
    await bus.publish(topology.VISITOR, "outage.message", chat_message())
    assert await asyncio.wait_for(done.get(), 30) == failures + 1
    assert await _dead_letters(bus, spec, 1, wait_s=0.5) == []


async def test_permanent_failure_is_dead_lettered_at_once(make_bus: MakeBus) -> None:
    bus = await make_bus("permanent")
    spec = _spec("permanent")
    calls = 0

    async def handler(envelope: Envelope) -> None:
        nonlocal calls
        calls += 1
        raise Permanent("unknown site 0000-00000-00-0000")

    await bus.consume(spec, handler)
    await bus.publish(topology.VISITOR, "permanent.message", chat_message())
    dead = await _dead_letters(bus, spec, 1)
    assert calls == 1
    assert str((dead[0].headers or {})[REASON_HEADER]) == "rejected: unknown site 0000-00000-00-0000"


CRASHING_CONSUMER = """
import asyncio, os, sys
from libs.common.messaging import Bus
from libs.common.settings import Settings
from libs.common.topology import QueueSpec, VISITOR

async def main():
    settings = Settings.from_env(amqp_url=sys.argv[1], amqp_retry_delays_ms="100")
    bus = await Bus.connect(settings, "crashing")
    async def handler(envelope):
        print("got", envelope.message_id, flush=True)
        os._exit(9)  # killed mid-handling: never acknowledges
    await bus.consume(QueueSpec(sys.argv[2], ((VISITOR, sys.argv[3]),)), handler)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_consumer_killed_before_ack_loses_nothing(make_bus: MakeBus, settings: Settings) -> None:
    """A consumer process dies holding the message: the broker redelivers it to the next one."""
    bus = await make_bus("survivor")
    spec = _spec("crash")
    await bus.declare_queue(spec)
    sent = chat_message("survives a crash")
    await bus.publish(topology.VISITOR, "crash.message", sent)

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_CONSUMER,
        settings.amqp_url,
        spec.name,
        "crash.message",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(child.communicate(), 20)
    assert child.returncode == 9 and sent.message_id in out.decode()

    received: asyncio.Queue[Envelope] = asyncio.Queue()

    async def handler(envelope: Envelope) -> None:
        await received.put(envelope)

    await bus.consume(spec, handler)
    got = await asyncio.wait_for(received.get(), 30)
    assert got.struct == sent and got.redelivered


async def test_batched_acks_settle_out_of_order_without_losing_or_repeating(make_bus: MakeBus) -> None:
    """batch_acks: acks asked for together go out as one multiple ack plus single ones;
    settled in any order (retries and dead letters among them), every message is
    settled exactly once: the channel stays open and nothing comes back."""
    bus = await make_bus("batched")
    spec = _spec("batched")
    received: list[Envelope] = []
    sent = [chat_message(f"line {i}") for i in range(40)]
    all_in = asyncio.Event()

    async def handler(envelope: Envelope) -> None:
        received.append(envelope)
        if len(received) == len(sent):
            all_in.set()

    consumer = await bus.consume(spec, handler, manual=True, batch_acks=True, prefetch=100)
    await bus.publish_all(topology.VISITOR, [("batched.message", m) for m in sent])
    await asyncio.wait_for(all_in.wait(), 30)

    # The newest half first (single acks: the oldest are still unsettled), one dead
    # letter among the oldest, then the rest together (one multiple ack).
    await asyncio.gather(*(e.ack() for e in received[20:]))
    await received[3].dead_letter("test")
    await asyncio.gather(*(e.ack() for i, e in enumerate(received[:20]) if i != 3))
    assert not consumer.channel.is_closed  # an ack of an unknown tag would have closed it

    await consumer.stop()  # anything left unacknowledged would return to the queue now
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(spec.name, passive=True)
    assert queue.declaration_result.message_count == 0
    await channel.close()
    assert [m.message_id for m in await _dead_letters(bus, spec, 1)] == [received[3].message_id]
