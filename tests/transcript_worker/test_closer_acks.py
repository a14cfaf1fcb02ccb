"""The closer's queue carries every VisitorEvent, and nearly all of them close nothing
(a widget boot's ARRIVED). With its acknowledgements written together (batch_acks),
every delivery is still acknowledged: once the worker stops, none comes back to the
queue, and the one that does close a conversation has closed it."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, topology
from libs.common.db import conversations
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig
from tests.transcript_worker.conftest import eventually, now_ms, running_worker


async def _waiting(bus: object, name: str) -> int:
    channel = await bus.connection.channel()  # type: ignore[attr-defined]
    queue = await channel.declare_queue(name, passive=True)
    count = int(queue.declaration_result.message_count or 0)
    await channel.close()
    return count


async def test_every_event_the_closer_skips_is_acknowledged(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    make_bus,
) -> None:
    bus = await make_bus("closer-acks")
    # A conversation without lines: its transcript is published but never emailed, so
    # nothing of this test reaches another test's SMTP server.
    visitor_id, conversation_id = uuid.uuid4().hex[:16], uuid.uuid4().hex
    arrivals = [
        codec.VisitorEvent(
            visitor_id=uuid.uuid4().hex[:16], site_id=site.site_id, kind=codec.VisitorEventKind.ARRIVED, at_ms=now_ms()
        )
        for _ in range(300)
    ]
    ended = codec.VisitorEvent(
        visitor_id=visitor_id,
        site_id=site.site_id,
        kind=codec.VisitorEventKind.ENDED_CHAT,
        at_ms=now_ms(),
        conversation_id=conversation_id,
    )
    for start in range(0, len(arrivals), 50):
        await asyncio.gather(
            *(bus.publish(topology.VISITOR, f"{site.site_id}.event", e) for e in arrivals[start : start + 50])
        )
    await bus.publish(topology.VISITOR, f"{site.site_id}.event", ended)

    closer_only = dataclasses.replace(worker_settings, worker_consumers="closer")
    async with running_worker(closer_only, redis_client, engine, "closer-acks"):

        async def closed() -> bool:
            with engine.connect() as conn:
                row = conn.execute(
                    sa.select(conversations.c.closed_at).where(conversations.c.id == conversation_id)
                ).first()
            return row is not None and row.closed_at is not None

        await eventually(closed, what="the chat closed")
        await eventually(lambda: _drained(bus), what="the closer's queue drained")
    # Stopped: anything delivered but never acknowledged would be back in the queue now.
    assert await _waiting(bus, topology.CLOSER.name) == 0


async def _drained(bus: object) -> bool:
    return await _waiting(bus, topology.CLOSER.name) == 0
