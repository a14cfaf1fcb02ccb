"""Sequence numbers never go backwards when Redis reloads an older snapshot or loses
everything, and the archive never holds two lines under one (conversation, seq).

A real redis-server of the test's own is snapshotted, written to, SIGKILLed and
restarted from the older snapshot; the floor comes from this run's real MariaDB."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, state
from libs.common.db import messages, site_store
from libs.common.db.history import seq_floor
from libs.common.settings import Settings
from libs.common.state.conversations import FLOOR_GAP, ConversationLog, chat_line
from services.transcript_worker import archive_store
from tests.redis_server import PrivateRedis

SITE: list[str] = []  # this run's site, made once (visitors refer to it)


@pytest.fixture(autouse=True)
def site(engine: sa.Engine) -> None:
    if not SITE:
        with engine.begin() as conn:
            account = site_store.account_for_email(conn, "seq-floor@shop.example")
            SITE.append(site_store.create_site(conn, account, "Seq floor").id)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
async def client(private_redis: PrivateRedis, settings: Settings) -> AsyncIterator[aioredis.Redis]:
    redis_client = state.connect(dataclasses.replace(settings, redis_url=private_redis.url))
    yield redis_client
    await redis_client.aclose()


def _archive(engine: sa.Engine, conversation_id: str, entries: list[dict[str, Any]]) -> None:
    batch = archive_store.Batch()
    for e in entries:
        line = codec.ChatMessage(
            message_id=e["message_id"],
            conversation_id=conversation_id,
            site_id=SITE[0],
            visitor_id="v1",
            sender=codec.SenderKind.VISITOR,
            body=e["body"],
            sent_at_ms=int(time.time() * 1000),
            seq=e["seq"],
        )
        batch.add(line, e["message_id"])
    archive_store.write(engine, batch)


async def _say(log: ConversationLog, conversation_id: str, body: str, *, new: bool = False) -> tuple[str, int]:
    message_id = uuid.uuid4().hex
    appended = await log.append(
        conversation_id, message_id, chat_line("visitor", body, int(time.time() * 1000)), new_conversation=new
    )
    return message_id, appended.seq


async def test_numbering_resumes_above_everything_seen_after_an_older_snapshot(
    private_redis: PrivateRedis, client: aioredis.Redis, settings: Settings, engine: sa.Engine
) -> None:
    log = ConversationLog(client, settings, seq_floor(engine))
    conversation = uuid.uuid4().hex
    ids = [await _say(log, conversation, "line 1", new=True)]
    ids += [await _say(log, conversation, f"line {n}") for n in range(2, 6)]
    assert [seq for _, seq in ids] == [1, 2, 3, 4, 5]
    private_redis.snapshot()
    ids += [await _say(log, conversation, f"line {n}") for n in range(6, 11)]
    # The archive has 1..8 (9 and 10 were still on their way when Redis died).
    entries = await log.after(conversation, 0)
    _archive(engine, conversation, [e for e in entries if e["seq"] <= 8])

    private_redis.kill()
    private_redis.start()  # reloads the snapshot: lines 1..5 only
    # Reading repairs the log first: 6..8 come back from MySQL (9 and 10 were never
    # archived: the transcript worker takes them from the queue, the log cannot).
    back = await log.after(conversation, 0)
    assert [e["seq"] for e in back] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e["body"] for e in back[5:]] == ["line 6", "line 7", "line 8"]
    assert back[5]["message_id"] == ids[5][0]

    _, seq = await _say(log, conversation, "after the restart")
    assert seq == 8 + FLOOR_GAP + 1, "resumes above MySQL's 8 plus the gap, never at 6"
    _, following = await _say(log, conversation, "and the next")
    assert following == seq + 1, "one floor per restart: numbering is gap-free again after it"
    # A resend of a line the snapshot kept keeps its seq; the widget's cursor reads on.
    again = await log.append(conversation, ids[2][0], chat_line("visitor", "line 3", 0))
    assert (again.seq, again.created) == (3, False)
    assert [e["seq"] for e in await log.after(conversation, 5)] == [6, 7, 8, seq, following]
    assert await log.last_seq(conversation) == following
    # Line 9 was on its way to the archive when Redis died; archived late, it comes
    # back on a read within HOLE_WINDOW_S, at the end (readers' cursors are past 9 by
    # now), so a receipted line still reaches the visitor.
    _archive(engine, conversation, [e for e in entries if e["seq"] == 9])
    tail = await log.after(conversation, following)
    assert [(e["seq"], e["body"], e["message_id"]) for e in tail] == [(following + 1, "line 9", ids[8][0])]


async def test_numbering_resumes_above_mysql_when_redis_lost_everything(
    private_redis: PrivateRedis, client: aioredis.Redis, settings: Settings, engine: sa.Engine
) -> None:
    log = ConversationLog(client, settings, seq_floor(engine))
    conversation = uuid.uuid4().hex
    await _say(log, conversation, "one", new=True)
    await _say(log, conversation, "two")
    _archive(engine, conversation, await log.after(conversation, 0))
    private_redis.kill()
    private_redis.forget_snapshot()
    private_redis.start()
    _, seq = await _say(log, conversation, "three")
    assert seq == 2 + FLOOR_GAP + 1


async def test_a_plain_restart_with_all_data_never_reuses_a_number(
    private_redis: PrivateRedis, client: aioredis.Redis, settings: Settings, engine: sa.Engine
) -> None:
    log = ConversationLog(client, settings, seq_floor(engine))
    conversation = uuid.uuid4().hex
    seqs = [(await _say(log, conversation, f"l{n}", new=n == 0))[1] for n in range(3)]
    private_redis.snapshot()
    private_redis.kill()
    private_redis.start()
    _, seq = await _say(log, conversation, "after")
    assert seq > max(seqs)


def test_the_archive_keeps_one_line_per_seq_and_ids_per_conversation(engine: sa.Engine) -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    shared_id = uuid.uuid4().hex
    _archive(engine, first, [{"message_id": shared_id, "seq": 1, "body": "in the first"}])
    # The same client id in another conversation is another line (ids are per conversation).
    _archive(engine, second, [{"message_id": shared_id, "seq": 1, "body": "in the second"}])
    # A different line under a seq already held is refused, never stored beside it.
    _archive(engine, first, [{"message_id": uuid.uuid4().hex, "seq": 1, "body": "a reused seq"}])
    # A repeat of the same line is a no-op.
    _archive(engine, first, [{"message_id": shared_id, "seq": 1, "body": "in the first"}])
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(messages.c.conversation_id, messages.c.seq, messages.c.body).where(
                messages.c.conversation_id.in_([first, second])
            )
        ).all()
    assert sorted((r.conversation_id == first, r.seq, r.body) for r in rows) == [
        (False, 1, "in the second"),
        (True, 1, "in the first"),
    ]
