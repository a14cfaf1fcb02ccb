"""End to end against real RabbitMQ, Redis, MariaDB and an SMTP server on loopback:
a conversation published as the frontend and gateway publish it is archived once,
closed (by `end`, by the visitor, by idle time), turned into one Transcript that a
downstream queue receives, and emailed once with the right content."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, topology
from libs.common.db import conversations, messages, page_views, transcripts, visitors
from libs.common.messaging import REASON_HEADER, Bus, Envelope
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig
from libs.common.state.conversations import ConversationLog
from libs.common.state.sessions import VisitorSessions
from tests.transcript_worker.conftest import OPERATOR_JID, Chat, SmtpServer, eventually, now_ms, part, running_worker

ROOT = Path(__file__).resolve().parents[2]


async def _downstream_queue(bus: Bus, exchange: str, key: str) -> aio_pika.abc.AbstractQueue:
    """A queue a downstream consumer would bind (auto-deleted with its channel)."""
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(f"test.downstream.{uuid.uuid4().hex[:8]}", exclusive=True)
    await queue.bind(await channel.get_exchange(exchange), routing_key=key)
    return queue


async def _drain(
    queue: aio_pika.abc.AbstractQueue, until: int, wait_s: float = 20, conversation_id: str | None = None
) -> list[Any]:
    """Up to ``until`` messages (only those of ``conversation_id``, if given: queues
    bound to shared exchanges also see other tests' conversations)."""
    got: list[Any] = []
    deadline = asyncio.get_running_loop().time() + wait_s
    while len(got) < until and asyncio.get_running_loop().time() < deadline:
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        await message.ack()
        if conversation_id is None or codec.decode(message.type, message.body).conversation_id == conversation_id:
            got.append(message)
    return got


def _count(engine: sa.Engine, table: sa.Table, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())


async def test_conversation_is_archived_closed_by_end_published_and_emailed_once(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
) -> None:
    bus = await make_bus("flow")
    frontend_id = f"fe-{uuid.uuid4().hex[:6]}"
    deliveries: asyncio.Queue[Envelope] = asyncio.Queue()

    async def on_delivery(envelope: Envelope) -> None:
        await deliveries.put(envelope)

    await bus.consume(topology.frontend_delivery_queue(frontend_id), on_delivery)
    downstream = await _downstream_queue(bus, topology.TRANSCRIPTS, "")
    closed_queue = await _downstream_queue(bus, topology.CONVERSATION, f"{site.site_id}.closed")

    chat = Chat(bus, redis_client, worker_settings, site.site_id, frontend_id)
    async with running_worker(worker_settings, redis_client, engine):
        await chat.page("https://shop.example/shoes", "Shoes", referrer="https://search.example/?q=shoes")
        await chat.page("https://shop.example/shoes/red", "Red <shoes>")
        first = await chat.visitor_says("Hi, do you have <b>red</b> shoes? <script>alert(1)</script>")
        await chat.operator_action("joined")
        await chat.operator_says("Yes, in sizes 38 to 45.")
        await chat.note("VIP customer, offer free shipping")
        await chat.identify('Eve "<img src=x>"\r\nBcc: victim@evil.example', "eve@visitor.example", "+44 20 7946 0000")
        await chat.visitor_says("Great, thanks!")
        # A redelivered / republished line must not be stored twice.
        await bus.publish(topology.VISITOR, f"{site.site_id}.message", first)
        await chat.operator_action("end")

        mail_id = f"<transcript.{chat.conversation_id}@habla.localhost>"
        await smtp.handler.wait_for(lambda: len(smtp.handler.with_id(mail_id)) == 1)
        cid = chat.conversation_id
        published = await _drain(downstream, 1, conversation_id=cid)
        closed = await _drain(closed_queue, 1, conversation_id=cid)
        # Give any duplicate a moment to show up before counting.
        await asyncio.sleep(1.0)
        assert len(smtp.handler.with_id(mail_id)) == 1
        assert await _drain(downstream, 1, wait_s=0.5, conversation_id=cid) == []
        assert await _drain(closed_queue, 1, wait_s=0.5, conversation_id=cid) == []

    # MySQL: every line once, the conversation closed by the operator.
    cid = chat.conversation_id
    assert _count(engine, messages, messages.c.conversation_id == cid) == 4  # 3 lines + 1 note
    assert _count(engine, messages, messages.c.message_id == first.message_id) == 1
    assert _count(engine, page_views, page_views.c.visitor_id == chat.visitor_id) == 2
    assert _count(engine, transcripts, transcripts.c.conversation_id == cid) == 1
    with engine.connect() as conn:
        conv = conn.execute(sa.select(conversations).where(conversations.c.id == cid)).one()
        visitor = conn.execute(sa.select(visitors).where(visitors.c.id == chat.visitor_id)).one()
        emailed = conn.execute(sa.select(transcripts.c.emailed_at).where(transcripts.c.conversation_id == cid)).one()
    assert conv.closed_at is not None and conv.close_reason == "OPERATOR_ENDED"
    assert (conv.last_seq, conv.operator_jid) == (3, OPERATOR_JID)
    assert visitor.email == "eve@visitor.example" and visitor.referrer == "https://search.example/?q=shoes"
    assert emailed.emailed_at is not None

    # ConversationClosed once, with the last seq before the "ended" line.
    closed_struct = codec.decode(closed[0].type, closed[0].body)
    assert (closed_struct.reason, closed_struct.last_seq) == (codec.CloseReason.OPERATOR_ENDED, 3)

    # The visitor's side: session forgets the conversation, the log says it ended,
    # and the frontend holding the visitor was told.
    session = await VisitorSessions(redis_client, worker_settings).get(chat.visitor_id)
    assert session is not None and "conversation_id" not in session
    log = await ConversationLog(redis_client, worker_settings).after(cid, 0)
    assert log[-1]["kind"] == "system" and log[-1]["body"] == "The chat has ended." and log[-1]["seq"] == 4
    delivery = await asyncio.wait_for(deliveries.get(), 30)
    assert delivery.struct.action.action == "ended" and delivery.struct.conversation_id == cid

    # The Transcript a downstream consumer receives.
    transcript = codec.decode(published[0].type, published[0].body)
    assert published[0].message_id == cid
    assert [m.body for m in transcript.messages if not m.internal] == [
        "Hi, do you have <b>red</b> shoes? <script>alert(1)</script>",
        "Yes, in sizes 38 to 45.",
        "Great, thanks!",
    ]
    assert [m.internal for m in transcript.messages].count(True) == 1
    assert [p.url for p in transcript.pages] == ["https://shop.example/shoes", "https://shop.example/shoes/red"]
    assert transcript.operator_jids == [OPERATOR_JID]
    assert transcript.site_name == "Shoe <shop>"

    # The email: both parts, escaped, theme colour, details, note marked internal.
    mail = smtp.handler.with_id(mail_id)[0]
    assert set(smtp.handler.rcpt[smtp.handler.mails.index(mail)]) == {"owner@shop.example", "team@shop.example"}
    assert "\n" not in str(mail["Subject"]) and mail["Bcc"] is None
    assert str(mail["Subject"]).startswith('Chat with Eve "<img src=x>" Bcc: victim@evil.example on Shoe <shop>')
    assert mail["Reply-To"].addresses[0].addr_spec == "eve@visitor.example"
    text = part(mail, "plain")
    html = part(mail, "html")
    assert "Hi, do you have <b>red</b> shoes?" in text and "Alice: Yes, in sizes 38 to 45." in text
    assert "[INTERNAL NOTE, not shown to the visitor]" in text and "VIP customer" in text
    assert "https://search.example/?q=shoes" in text and "+44 20 7946 0000" in text
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x>" not in html and "Red &lt;shoes&gt;" in html
    assert "Internal note (not shown to the visitor)" in html and "#123456" in html

    # A second Thrift implementation (Apache's compiler + official thrift package) reads it.
    decoded = _decode_with_apache_thrift(published[0].body)
    assert decoded["conversation_id"] == cid
    assert decoded["bodies"][0] == "Hi, do you have <b>red</b> shoes? <script>alert(1)</script>"
    assert decoded["internal"] == [False, False, True, False] or sorted(decoded["internal"]) == [
        False,
        False,
        False,
        True,
    ]
    assert decoded["pages"] == ["https://shop.example/shoes", "https://shop.example/shoes/red"]
    assert decoded["reason"] == codec.CloseReason.OPERATOR_ENDED


_APACHE_READER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from thrift.TSerialization import deserialize
from thrift.protocol.TCompactProtocol import TCompactProtocolFactory
from habla.ttypes import Transcript
t = deserialize(Transcript(), sys.stdin.buffer.read(), TCompactProtocolFactory())
t.validate()
print(json.dumps({"conversation_id": t.conversation_id, "bodies": [m.body for m in t.messages],
                  "internal": [bool(m.internal) for m in t.messages], "pages": [p.url for p in t.pages],
                  "reason": t.reason, "module": sys.modules["thrift"].__file__}))
"""


def _decode_with_apache_thrift(body: bytes) -> dict[str, Any]:
    thrift = shutil.which("thrift")
    if thrift is None:
        pytest.skip("thrift compiler not installed (scripts/setup.sh installs thrift-compiler)")
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [thrift, "--gen", "py", "-out", out, str(ROOT / "thrift" / "habla.thrift")], check=True, timeout=60
        )
        result = subprocess.run(
            [sys.executable, "-c", _APACHE_READER, out], input=body, capture_output=True, timeout=60, cwd=out
        )
    assert result.returncode == 0, result.stderr.decode()
    decoded: dict[str, Any] = json.loads(result.stdout)
    assert "thriftpy2" not in decoded["module"]
    return decoded


async def test_idle_conversation_closes_by_itself_and_visitor_end_closes_at_once(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
) -> None:
    import dataclasses

    # A Redis prefix of its own, so the idle sweeper's lease is this test's: a worker an
    # earlier test SIGKILLed (test_processes.py) leaves the run's lease held for its ttl.
    settings = dataclasses.replace(
        worker_settings,
        conversation_idle_s=2,
        redis_prefix=f"{worker_settings.redis_prefix}idle-{uuid.uuid4().hex[:6]}:",
    )
    bus = await make_bus("idle")
    idle = Chat(bus, redis_client, settings, site.site_id, "nobody")
    ended = Chat(bus, redis_client, settings, site.site_id, "nobody")
    async with running_worker(settings, redis_client, engine):
        await idle.visitor_says("anyone there?")
        await ended.visitor_says("never mind")
        await ended.visitor_ends()

        async def closed(chat: Chat, reason: str) -> bool:
            with engine.connect() as conn:
                row = conn.execute(
                    sa.select(conversations.c.close_reason).where(conversations.c.id == chat.conversation_id)
                ).first()
            return row is not None and row.close_reason == reason

        await eventually(lambda: closed(ended, "VISITOR_ENDED"), what="visitor end closes")
        await eventually(lambda: closed(idle, "IDLE"), wait_s=15, what="idle close")
        with engine.connect() as conn:
            row = conn.execute(sa.select(conversations).where(conversations.c.id == idle.conversation_id)).one()
        # Closed by the sweep, and not before its idle time had passed.
        assert (row.closed_at - row.last_message_at).total_seconds() >= settings.conversation_idle_s
        for chat in (idle, ended):
            mail_id = f"<transcript.{chat.conversation_id}@habla.localhost>"
            await smtp.handler.wait_for(lambda: len(smtp.handler.with_id(mail_id)) == 1)  # noqa: B023


async def test_offline_message_is_emailed_with_reply_to_the_visitor(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
) -> None:
    bus = await make_bus("offline")
    note = codec.OfflineMessage(
        message_id=uuid.uuid4().hex,
        site_id=site.site_id,
        visitor_id="v-offline",
        name="Bob\r\nBcc: all@evil.example <script>",
        email="bob@visitor.example",
        body="Please call me back <b>tomorrow</b>.",
        sent_at_ms=now_ms(),
        page_url="https://shop.example/contact",
    )
    async with running_worker(worker_settings, redis_client, engine):
        await bus.publish(topology.VISITOR, f"{site.site_id}.offline", note)
        await bus.publish(topology.VISITOR, f"{site.site_id}.offline", note)  # a repeat
        mail_id = f"<offline.{note.message_id}@habla.localhost>"
        await smtp.handler.wait_for(lambda: len(smtp.handler.with_id(mail_id)) == 1)
        await asyncio.sleep(0.5)
    mails = smtp.handler.with_id(mail_id)
    assert len(mails) == 1
    mail = mails[0]
    assert mail["Bcc"] is None and "\n" not in str(mail["Subject"])
    assert str(mail["Subject"]).startswith("Bob Bcc: all@evil.example <script> wrote you a note")
    assert mail["Reply-To"].addresses[0].addr_spec == "bob@visitor.example"
    html = part(mail, "html")
    assert "<b>tomorrow</b>" not in html and "&lt;b&gt;tomorrow&lt;/b&gt;" in html
    assert "Please call me back <b>tomorrow</b>." in part(mail, "plain")


async def test_bad_input_is_dead_lettered_with_its_reason_and_the_worker_goes_on(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
) -> None:
    bus = await make_bus("bad")
    chat = Chat(bus, redis_client, worker_settings, site.site_id, "nobody")
    stranger = Chat(bus, redis_client, worker_settings, "1111-22222-33-4444", "nobody")
    async with running_worker(worker_settings, redis_client, engine):
        await bus.publish_raw(
            topology.VISITOR,
            f"{site.site_id}.message",
            aio_pika.Message(b"\x00garbage", type="ChatMessage", message_id=uuid.uuid4().hex),
        )
        unknown = await stranger.visitor_says("hello from nowhere")
        good = await chat.visitor_says("still archived")

        async def archived() -> bool:
            return _count(engine, messages, messages.c.message_id == good.message_id) == 1

        await eventually(archived, what="good message archived after the bad ones")

    channel = await bus.connection.channel()
    dead = await channel.get_queue(topology.ARCHIVE.dead_letter_queue)
    reasons: dict[str, str] = {}
    for _ in range(200):
        message = await dead.get(fail=False)
        if message is None:
            break
        await message.ack()
        reasons[str(message.message_id)] = str((message.headers or {}).get(REASON_HEADER))
    assert any(r.startswith("undecodable: ") and "ChatMessage" in r for r in reasons.values()), reasons
    assert reasons[unknown.message_id].startswith("rejected: no site 1111-22222-33-4444")
    assert _count(engine, messages, messages.c.message_id == unknown.message_id) == 0


async def test_a_conversation_closes_once_however_often_it_is_ended(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
) -> None:
    bus = await make_bus("twice")
    closed_queue = await _downstream_queue(bus, topology.CONVERSATION, f"{site.site_id}.closed")
    chat = Chat(bus, redis_client, worker_settings, site.site_id, "nobody")
    async with running_worker(worker_settings, redis_client, engine):
        await chat.visitor_says("bye")
        await chat.visitor_ends()
        await chat.operator_action("end")
        await chat.operator_action("block")
        got = await _drain(closed_queue, 2, wait_s=4, conversation_id=chat.conversation_id)
    assert len(got) == 1


async def test_a_line_that_never_reached_rabbitmq_is_taken_from_the_log(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
) -> None:
    """A frontend that dies between appending a line to the log and publishing it
    leaves a gap the archive can never fill; after waiting, the transcript takes the
    line from the log instead of waiting forever."""
    import dataclasses

    settings = dataclasses.replace(worker_settings, transcript_wait_s=1)
    bus = await make_bus("gap")
    downstream = await _downstream_queue(bus, topology.TRANSCRIPTS, "")
    chat = Chat(bus, redis_client, settings, site.site_id, "nobody")
    async with running_worker(settings, redis_client, engine):
        await chat.visitor_says("first, published")
        lost_id = uuid.uuid4().hex
        await chat.log.append(
            chat.conversation_id,
            lost_id,
            {"kind": "message", "sender": "visitor", "body": "second, never published", "sent_at_ms": now_ms()},
        )
        await chat.operator_says("third, published")
        await chat.operator_action("end")
        published = await _drain(downstream, 1, conversation_id=chat.conversation_id)
    transcript = codec.decode(published[0].type, published[0].body)
    assert [(m.seq, m.body) for m in transcript.messages] == [
        (1, "first, published"),
        (2, "second, never published"),
        (3, "third, published"),
    ]
    assert _count(engine, messages, messages.c.message_id == lost_id) == 1
