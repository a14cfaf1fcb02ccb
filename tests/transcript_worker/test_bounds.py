"""A transcript's work is proportional to the log it really has, never to last_seq
(issue 11: ``last_seq = 10**12`` once grew the worker to 23 GB; such a number is now
dead-lettered as implausible, and even the largest plausible one costs nothing)."""

from __future__ import annotations

import resource
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, plausible
from libs.common.db import site_store
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog, chat_line
from services.transcript_worker import archive_store
from services.transcript_worker.transcript_builder import TranscriptBuilder


def _closed(conversation_id: str, last_seq: int) -> Any:
    return codec.ConversationClosed(
        conversation_id=conversation_id,
        site_id="4324-24618-10-8812",
        visitor_id="v",
        reason=codec.CloseReason.IDLE,
        last_seq=last_seq,
        closed_at_ms=int(time.time() * 1000),
    )


async def test_the_largest_plausible_last_seq_costs_what_the_log_holds(
    settings: Settings, engine: sa.Engine, redis_client: aioredis.Redis
) -> None:
    log = ConversationLog(redis_client, settings)
    conversation = uuid.uuid4().hex
    for n in range(3):
        await log.append(conversation, uuid.uuid4().hex, chat_line("visitor", f"l{n}", 1), new_conversation=n == 0)
    builder = TranscriptBuilder(engine, redis_client, settings)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    missing = await builder.missing(_closed(conversation, plausible.MAX_SEQ))
    assert missing == [1, 2, 3]  # what the log has and the archive lacks, nothing more
    # A list of ten million ints alone would take ~400 MB; allow a little for the run.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 50 * 1024


async def test_a_line_the_archive_never_takes_becomes_a_gap_note_after_a_bounded_wait(
    settings: Settings, engine: sa.Engine, redis_client: aioredis.Redis
) -> None:
    with engine.begin() as conn:
        account = site_store.account_for_email(conn, "gap@shop.example")
        site_id = site_store.create_site(conn, account, "Gap").id
    log = ConversationLog(redis_client, settings)
    conversation = uuid.uuid4().hex
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    await log.append(conversation, first, chat_line("visitor", "one", 1_700_000_000_000), new_conversation=True)
    await log.append(conversation, second, chat_line("visitor", "two", 1_700_000_001_000))
    # MySQL already holds another line under seq 2 (what the seq floor prevents): the
    # log's second line can never be archived.
    other = uuid.uuid4().hex
    batch = archive_store.Batch()
    batch.add(
        codec.ChatMessage(
            message_id=other, conversation_id=conversation, site_id=site_id, visitor_id="v",
            sender=codec.SenderKind.VISITOR, body="someone else's", sent_at_ms=1_700_000_001_000, seq=2,
        ),
        other,
    )  # fmt: skip
    archive_store.write(engine, batch)
    closed = _closed(conversation, 2)
    closed.site_id = site_id
    builder = TranscriptBuilder(engine, redis_client, settings)
    gaps = await builder.wait_until_archived(closed, 0.2)
    assert gaps == [2]
    transcript = await builder.build(closed, "Gap", {}, gaps)
    assert transcript.messages[-1].sender == codec.SenderKind.SYSTEM
    assert "could not be archived in time (seq 2)" in transcript.messages[-1].body
