"""Messaging façade overhead: Bus (codec + confirms + consumer bookkeeping) against bare
aio-pika doing the same work in the same run, on a vhost of its own.

    .venv/bin/python bench/bench_messaging.py [N]

Prints confirmed publishes/s (sequential and 50 in flight), consume+ack/s, codec ops/s,
and the ratio of each Bus figure to its bare aio-pika baseline.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any

import aio_pika

from libs.common import codec, topology
from libs.common.messaging import Bus, Envelope
from libs.common.settings import Settings
from libs.common.topology import QueueSpec
from tools import sandbox

IN_FLIGHT = 50  # concurrent confirmed publishes, like 50 visitors sending at once


def _message(n: int) -> Any:
    return codec.ChatMessage(
        message_id=uuid.uuid4().hex,
        conversation_id="c" * 32,
        site_id="4324-24618-10-8812",
        visitor_id="v" * 16,
        sender=codec.SenderKind.VISITOR,
        body="Hello, is the blue one in stock in size 42?",
        sent_at_ms=1,
        seq=n,
        page_url="https://shop.example/products/blue-shoe",
    )


async def _publish_rate(publish: Any, n: int, concurrent: bool) -> float:
    started = time.perf_counter()
    if concurrent:
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one(i: int) -> None:
            async with sem:
                await publish(i)

        await asyncio.gather(*(one(i) for i in range(n)))
    else:
        for i in range(n):
            await publish(i)
    return n / (time.perf_counter() - started)


async def _drain(queue: aio_pika.abc.AbstractQueue, n: int, on_message: Any) -> float:
    done = asyncio.Event()
    count = 0

    async def callback(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count
        await on_message(message)
        count += 1
        if count == n:
            done.set()

    started = time.perf_counter()
    tag = await queue.consume(callback)
    await done.wait()
    await queue.cancel(tag)
    return n / (time.perf_counter() - started)


async def run(settings: Settings, n: int) -> None:
    bus = await Bus.connect(settings, "bench")
    spec = QueueSpec("bench.bus", ((topology.VISITOR, "bus.message"),))
    await bus.declare_topology(queues=(spec,))
    raw_conn = await aio_pika.connect_robust(settings.amqp_url)
    raw_channel = await raw_conn.channel(publisher_confirms=True)
    raw_exchange = await raw_channel.declare_exchange(topology.VISITOR, aio_pika.ExchangeType.TOPIC, durable=True)
    raw_queue = await raw_channel.declare_queue("bench.raw", durable=True, arguments={"x-queue-type": "quorum"})
    await raw_queue.bind(raw_exchange, "raw.message")
    body = codec.encode(_message(1))

    async def bus_publish(i: int) -> None:
        await bus.publish(topology.VISITOR, "bus.message", _message(i))

    async def raw_publish(i: int) -> None:
        await raw_exchange.publish(
            aio_pika.Message(
                body,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                type="ChatMessage",
                message_id=uuid.uuid4().hex,
            ),
            routing_key="raw.message",
        )

    rows: list[tuple[str, float, float]] = []
    for label, concurrent in (
        ("confirmed publish, sequential", False),
        (f"confirmed publish, {IN_FLIGHT} in flight", True),
    ):
        raw = await _publish_rate(raw_publish, n, concurrent)
        ours = await _publish_rate(bus_publish, n, concurrent)
        rows.append((label, ours, raw))

    # Consume + ack what was published (2n each).
    received = asyncio.Event()
    count = 0

    async def handler(envelope: Envelope) -> None:
        nonlocal count
        count += 1
        if count == 2 * n:
            received.set()

    started = time.perf_counter()
    await bus.consume(spec, handler, prefetch=200)
    await received.wait()
    ours_consume = 2 * n / (time.perf_counter() - started)
    await raw_channel.set_qos(prefetch_count=200)

    async def raw_ack(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        codec.decode(message.type, message.body)
        await message.ack()

    raw_consume = await _drain(raw_queue, 2 * n, raw_ack)
    rows.append(("consume + decode + ack", ours_consume, raw_consume))

    started = time.perf_counter()
    sample = _message(1)
    for _ in range(20_000):
        codec.decode("ChatMessage", codec.encode(sample))
    codec_rate = 20_000 / (time.perf_counter() - started)

    print(f"messages per case: {n} (ChatMessage, {len(body)} bytes, quorum queues, persistent)")
    print(f"{'case':42} {'Bus msg/s':>10} {'aio-pika msg/s':>15} {'ratio':>6}")
    for label, ours, raw in rows:
        print(f"{label:42} {ours:10.0f} {raw:15.0f} {ours / raw:6.2f}")
    print(f"codec encode+decode round trips/s: {codec_rate:.0f}")
    await bus.close()
    await raw_conn.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with sandbox.sandboxed("bench-messaging", own_database=False) as settings:
        asyncio.run(run(settings, n))


if __name__ == "__main__":
    main()
