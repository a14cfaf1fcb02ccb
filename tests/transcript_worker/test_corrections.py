"""Corrections (XEP-0308) and /me through the real worker: the archive keeps the first
version and the correction as rows of their own; the transcript (email, downstream
struct) and the console show one line with the latest text, marked edited."""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec
from libs.common.db import messages, transcripts
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig
from services.console.store import ConsoleStore
from services.transcript_worker import rendering
from tests.transcript_worker.conftest import Chat, SmtpServer, part, running_worker


async def test_a_correction_edits_its_line_everywhere_and_the_archive_keeps_the_original(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
) -> None:
    bus = await make_bus("corrections")
    chat = Chat(bus, redis_client, worker_settings, site.site_id, f"fe-{uuid.uuid4().hex[:6]}")
    async with running_worker(worker_settings, redis_client, engine):
        await chat.page("https://shop.example/", "Shop")
        await chat.visitor_says("Do you ship to Canada?")
        await chat.operator_action("joined")
        first = await chat.operator_says("We ship in 3-5 weeks")
        await chat.operator_says("We ship in 3-5 days", replaces=first.message_id)
        await chat.operator_says("We ship in 3-5 business days", replaces=first.message_id)
        await chat.operator_says("/me waves")
        await chat.visitor_says("/me nods")
        await chat.operator_action("end")
        mail_id = f"<transcript.{chat.conversation_id}@habla.localhost>"
        await smtp.handler.wait_for(lambda: len(smtp.handler.with_id(mail_id)) == 1)

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(messages.c.body, messages.c.replaces_message_id)
            .where(messages.c.conversation_id == chat.conversation_id)
            .order_by(messages.c.seq)
        ).all()
    # Nothing overwritten: the first version and both corrections are rows.
    assert [(r.body, r.replaces_message_id) for r in rows] == [
        ("Do you ship to Canada?", None),
        ("We ship in 3-5 weeks", None),
        ("We ship in 3-5 days", first.message_id),
        ("We ship in 3-5 business days", first.message_id),
        ("/me waves", None),
        ("/me nods", None),
    ]

    text = part(smtp.handler.with_id(mail_id)[0], "plain")
    html = part(smtp.handler.with_id(mail_id)[0], "html")
    assert "Alice: We ship in 3-5 business days (edited)" in text
    assert "3-5 weeks" not in text and "3-5 days (" not in text
    assert "* Alice waves" in text and "nods" in text and "/me" not in text
    assert "<em>* Alice waves</em>" in html and "(edited)" in html and "3-5 weeks" not in html

    # The Transcript for downstream consumers carries every version, corrections marked.
    transcript = await _stored_transcript(engine, chat.conversation_id)
    corrections = [m for m in transcript.messages if m.replaces_message_id]
    assert [m.body for m in corrections] == ["We ship in 3-5 days", "We ship in 3-5 business days"]
    context = rendering.transcript_context(transcript, site)
    assert [(line.body, line.edited) for line in context["lines"] if line.kind == "operator"] == [
        ("We ship in 3-5 business days", True),
        ("/me waves", False),
    ]

    # The site owner's console shows the same.
    lines = ConsoleStore(engine).transcript(site.site_id, chat.conversation_id)
    assert [(line.body, line.edited, line.action) for line in lines] == [
        ("Do you ship to Canada?", False, None),
        ("We ship in 3-5 business days", True, None),
        ("/me waves", False, "waves"),
        ("/me nods", False, "nods"),
    ]
    [summary] = ConsoleStore(engine).recent_conversations(site.site_id, conversation_id=chat.conversation_id)
    assert summary.messages == 4  # corrections are not new messages


async def _stored_transcript(engine: sa.Engine, conversation_id: str) -> Any:
    with engine.connect() as conn:
        body = conn.execute(
            sa.select(transcripts.c.body).where(transcripts.c.conversation_id == conversation_id)
        ).scalar_one()
    return codec.decode("Transcript", body)
