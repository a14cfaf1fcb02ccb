"""A transcript's work is proportional to the log it really has, never to last_seq
(issue 11: ``last_seq = 10**12`` once grew the worker to 23 GB; such a number is now
dead-lettered as implausible, and even the largest plausible one costs nothing)."""

from __future__ import annotations

import resource
import time
import uuid

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, plausible
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog, chat_line
from services.transcript_worker.transcript_builder import TranscriptBuilder


def _closed(conversation_id: str, last_seq: int) -> object:
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
