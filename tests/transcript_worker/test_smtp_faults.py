"""SMTP trouble: a refusing server is retried with backoff until it accepts; one that
refuses for good (5xx), or cannot be reached through every retry, dead-letters the
message with the reason. Retry delays come from the test settings (100 ms, 200 ms)."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, topology
from libs.common.messaging import REASON_HEADER, Bus
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig
from services.transcript_worker import conversation_store
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


def _transcript(site_id: str, n: int) -> codec.Transcript:
    conversation_id, visitor_id = uuid.uuid4().hex, f"v-drop-{n}"
    line = codec.ChatMessage(
        message_id=uuid.uuid4().hex,
        conversation_id=conversation_id,
        site_id=site_id,
        visitor_id=visitor_id,
        sender=codec.SenderKind.VISITOR,
        body=f"line of chat {n}",
        sent_at_ms=now_ms(),
        seq=1,
    )
    return codec.Transcript(
        conversation_id=conversation_id,
        site_id=site_id,
        visitor_id=visitor_id,
        pages=[],
        messages=[line],
        operator_jids=[],
        started_at_ms=now_ms(),
        closed_at_ms=now_ms(),
        reason=codec.CloseReason.IDLE,
    )


@pytest.mark.parametrize("taken_before_drop", [False, True], ids=["dropped-before-taking", "dropped-after-taking"])
async def test_connection_dropped_mid_batch_loses_nothing_and_resends_nothing_accepted(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
    taken_before_drop: bool,
) -> None:
    """A batch of transcripts goes out over pooled connections; the server cuts one
    connection in the middle of the batch, in the middle of a mail's DATA, without
    answering it. Every transcript arrives; none the server had answered "250" is sent
    again; only the one whose answer never came may arrive twice (if the server had
    taken it: SMTP cannot tell), with the same Message-ID. Every delivery is settled."""
    bus = await make_bus("smtp-drop")
    handler = smtp.handler
    datas = 0
    dropped: list[str] = []
    accept = handler.handle_DATA

    async def dropping_data(server: Any, session: Any, envelope: Any) -> str:
        nonlocal datas
        datas += 1
        if datas == 4:  # mid-batch: three mails accepted before it, more after
            mail = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.default)
            dropped.append(str(mail["Message-ID"]))
            if taken_before_drop:
                await accept(server, session, envelope)
            server.transport.abort()  # no "250": the client cannot know
            return "421 gone"  # never reaches the client
        return await accept(server, session, envelope)

    handler.handle_DATA = dropping_data  # type: ignore[method-assign]
    transcripts = [_transcript(site.site_id, n) for n in range(12)]
    for transcript in transcripts:
        # As the transcripts consumer does: stored (emailed_at empty), then published.
        conversation_store.store_transcript(engine, transcript.conversation_id, site.site_id, codec.encode(transcript))
    # Published before the worker starts, so they arrive as one batch.
    for transcript in transcripts:
        await bus.publish(topology.TRANSCRIPTS, "", transcript)
    ids = [f"<transcript.{t.conversation_id}@habla.localhost>" for t in transcripts]

    async def all_recorded() -> bool:
        emailed, _ = conversation_store.emailed_already(engine, [t.conversation_id for t in transcripts], [])
        return len(emailed) == len(transcripts)

    async with running_worker(worker_settings, redis_client, engine):
        await handler.wait_for(lambda: all(handler.with_id(i) for i in ids))
        await eventually(all_recorded, what="every transcript recorded as emailed")
    assert len(dropped) == 1
    counts = {i: len(handler.with_id(i)) for i in ids}
    assert all(count == 1 for i, count in counts.items() if i not in dropped), counts
    assert counts[dropped[0]] == (2 if taken_before_drop else 1), counts
    # Every delivery settled, none of them dead-lettered.
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(topology.EMAIL.name, passive=True)
    assert queue.declaration_result.message_count == 0
    dead_queue = await channel.get_queue(topology.EMAIL.dead_letter_queue)
    ours = {t.conversation_id for t in transcripts}
    while (message := await dead_queue.get(fail=False)) is not None:
        await message.ack()
        if message.type == "Transcript":
            assert codec.decode("Transcript", message.body).conversation_id not in ours
    await channel.close()
