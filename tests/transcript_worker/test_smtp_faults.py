"""SMTP trouble: a refusing server is retried with backoff until it accepts; one that
refuses for good (5xx), or cannot be reached through every retry, dead-letters the
message with the reason. Retry delays come from the test settings (100 ms, 200 ms)."""

from __future__ import annotations

import dataclasses
import uuid

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, topology
from libs.common.messaging import REASON_HEADER, Bus
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig
from tests.transcript_worker.conftest import SmtpServer, eventually, now_ms, running_worker
from tools import prosody


def _note(site_id: str) -> codec.OfflineMessage:
    return codec.OfflineMessage(
        message_id=uuid.uuid4().hex,
        site_id=site_id,
        visitor_id="v-smtp",
        name="Carol",
        email="carol@visitor.example",
        body="hello",
        sent_at_ms=now_ms(),
    )


async def _dead_reason(bus: Bus, message_id: str) -> str | None:
    """The reason our message was dead-lettered with, if it is there yet (the queue
    belongs to this test run, so other dead letters are simply taken off it)."""
    channel = await bus.connection.channel()
    queue = await channel.get_queue(topology.EMAIL.dead_letter_queue)
    found = None
    while (message := await queue.get(fail=False)) is not None:
        await message.ack()
        if message.message_id == message_id:
            found = str((message.headers or {}).get(REASON_HEADER))
    await channel.close()
    return found


async def test_refused_then_accepted_arrives_after_retries(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
) -> None:
    bus = await make_bus("smtp-retry")
    smtp.handler.refusals = ["451 4.3.0 Mailbox busy, try again later", "452 4.3.1 Insufficient storage"]
    note = _note(site.site_id)
    async with running_worker(worker_settings, redis_client, engine):
        await bus.publish(topology.VISITOR, f"{site.site_id}.offline", note)
        await smtp.handler.wait_for(
            lambda: len(smtp.handler.with_id(f"<offline.{note.message_id}@habla.localhost>")) == 1
        )
    assert smtp.handler.attempts == 3  # two refusals, then accepted on the second retry


async def test_permanent_refusal_is_dead_lettered_with_the_reason(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
) -> None:
    bus = await make_bus("smtp-dead")
    smtp.handler.refuse_always = "550 5.7.1 Relaying denied"
    note = _note(site.site_id)
    async with running_worker(worker_settings, redis_client, engine):
        await bus.publish(topology.VISITOR, f"{site.site_id}.offline", note)
        reasons: list[str] = []

        async def dead() -> bool:
            reason = await _dead_reason(bus, note.message_id)
            if reason:
                reasons.append(reason)
            return bool(reasons)

        await eventually(dead, what="dead letter")
    assert reasons[0].startswith("rejected: SMTP server answered 550") and "Relaying denied" in reasons[0]
    assert smtp.handler.attempts == 1  # a 5xx is not retried
    assert smtp.handler.mails == []


async def test_unreachable_smtp_is_retried_then_dead_lettered(
    worker_settings: Settings, redis_client: aioredis.Redis, engine: sa.Engine, site: SiteConfig, make_bus
) -> None:
    bus = await make_bus("smtp-down")
    settings = dataclasses.replace(worker_settings, smtp_port=prosody.free_port())  # nothing listens there
    note = _note(site.site_id)
    async with running_worker(settings, redis_client, engine):
        await bus.publish(topology.VISITOR, f"{site.site_id}.offline", note)
        reasons: list[str] = []

        async def dead() -> bool:
            reason = await _dead_reason(bus, note.message_id)
            if reason:
                reasons.append(reason)
            return bool(reasons)

        await eventually(dead, what="dead letter")
    assert reasons[0].startswith("gave up after 3 attempts: MailUnavailable: cannot reach SMTP server"), reasons
