"""Closing details against real Redis, MariaDB and RabbitMQ: one sweeper at a time
(Redis lease), and a close interrupted after the MySQL claim is finished by the next
attempt instead of being lost."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, topology
from libs.common.lease import Lease, LeaseBusy
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig
from services.transcript_worker import conversation_store
from services.transcript_worker.closing import Closer, IdleSweeper


async def test_only_one_sweeper_holds_the_lease_until_it_stops_renewing(
    settings: Settings, redis_client: aioredis.Redis, engine: sa.Engine, make_bus
) -> None:
    fast = dataclasses.replace(settings, redis_prefix=f"{settings.redis_prefix}lease-{uuid.uuid4().hex[:6]}:")
    bus = await make_bus("sweepers")
    sweepers = [IdleSweeper(engine, redis_client, Closer(engine, redis_client, bus, fast), fast) for _ in range(2)]
    first, second = sweepers
    assert await first.lease.acquire()
    assert not await second.lease.acquire()
    assert await first.lease.acquire()  # the holder renews
    await first.lease.release()
    assert await second.lease.acquire()  # released: the other takes over
    # A holder that dies simply stops renewing; the lease passes after its ttl.
    assert not await first.lease.acquire()
    await redis_client.pexpire(second.lease.key, 50)
    await asyncio.sleep(0.1)
    assert await first.lease.acquire()


async def test_lease_held_waits_for_the_holder_and_gives_up_with_busy(redis_client: aioredis.Redis) -> None:
    key = f"habla-test-lease-{uuid.uuid4().hex}"
    # A 1.5 s ttl (renewed every 0.5 s): with 300 ms a loaded machine's late renewal lost
    # the lease in the sleep below, which tests that renewal keeps it, not how promptly.
    holder, waiter = Lease(redis_client, key, 1500), Lease(redis_client, key, 1500)
    async with holder.held():
        started = time.monotonic()
        try:
            async with waiter.held(wait_s=0.1):
                raise AssertionError("two holders at once")
        except LeaseBusy:
            pass
        # A lower bound, not a speed: it waited out wait_s before giving up (load can
        # only lengthen the wait, never fail this).
        assert time.monotonic() - started >= 0.1
        await asyncio.sleep(2.0)  # longer than the ttl: renewal keeps it ours
        assert await redis_client.get(key) == holder.token
    async with waiter.held(wait_s=0.1):
        assert await redis_client.get(key) == waiter.token


async def test_a_close_interrupted_after_the_claim_is_finished_by_the_next_attempt(
    settings: Settings, redis_client: aioredis.Redis, engine: sa.Engine, site: SiteConfig, make_bus
) -> None:
    bus = await make_bus("interrupted")
    channel = await bus.connection.channel()
    closed_queue = await channel.declare_queue(exclusive=True)
    await closed_queue.bind(await channel.get_exchange(topology.CONVERSATION), routing_key=f"{site.site_id}.closed")
    conversation_id, visitor_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    # A closer claimed the conversation in MySQL, then died before any side effect.
    claimed = await asyncio.to_thread(
        conversation_store.claim_close,
        engine,
        conversation_id,
        site.site_id,
        visitor_id,
        "BLOCKED",
        int(time.time() * 1000),
    )
    assert claimed
    closer = Closer(engine, redis_client, bus, settings)
    # The redelivered "end" finds it closed but unfinished, and finishes it with the
    # reason the first closer recorded.
    assert await closer.close(conversation_id, site.site_id, visitor_id, "OPERATOR_ENDED") is False
    message = await closed_queue.get(timeout=5)
    await message.ack()
    closed = codec.decode(message.type, message.body)
    assert (closed.conversation_id, closed.reason) == (conversation_id, codec.CloseReason.BLOCKED)
    # Finished now: a further attempt does nothing.
    assert await closer.close(conversation_id, site.site_id, visitor_id, "OPERATOR_ENDED") is False
    assert await closed_queue.get(fail=False) is None
    await channel.close()
