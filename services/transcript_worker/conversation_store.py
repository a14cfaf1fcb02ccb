"""Conversations after the chat: closing, transcripts, email bookkeeping (MySQL, no AMQP).

Blocking SQLAlchemy calls; the consumers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from libs.common.db import conversations, messages, offline_messages, page_views, transcripts, visitors
from services.transcript_worker.archive_store import from_ms


@dataclass(frozen=True)
class OpenConversation:
    id: str
    site_id: str
    visitor_id: str
    last_seq: int


def claim_close(
    engine: sa.Engine, conversation_id: str, site_id: str, visitor_id: str, reason: str, closed_at_ms: int
) -> bool:
    """Mark the conversation closed; True only for the one caller that closed it.

    The conditional UPDATE (``WHERE closed_at IS NULL``) is the exactly-once point:
    MySQL serialises two closers on the row lock and only one sees a changed row. A
    close may arrive before the archive has written the conversation (separate queues),
    so the row is created first if missing; the archive's later upsert fixes its start.
    """
    closed_at = from_ms(closed_at_ms)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(conversations)
            .prefix_with("IGNORE")
            .values(
                id=conversation_id,
                site_id=site_id,
                visitor_id=visitor_id,
                started_at=closed_at,
                last_message_at=closed_at,
            )
        )
        result = conn.execute(
            sa.update(conversations)
            .where(conversations.c.id == conversation_id, conversations.c.closed_at.is_(None))
            .values(closed_at=closed_at, close_reason=reason)
        )
        return bool(result.rowcount == 1)


def conversation(engine: sa.Engine, conversation_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(conversations).where(conversations.c.id == conversation_id)).first()


def idle_conversations(engine: sa.Engine, idle_since: datetime.datetime, limit: int) -> list[OpenConversation]:
    """Open conversations whose last archived line is older than ``idle_since``
    (uses ix_conversations_open_idle)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(conversations.c.id, conversations.c.site_id, conversations.c.visitor_id, conversations.c.last_seq)
            .where(conversations.c.closed_at.is_(None), conversations.c.last_message_at < idle_since)
            .order_by(conversations.c.last_message_at)
            .limit(limit)
        ).all()
    return [OpenConversation(r.id, r.site_id, r.visitor_id, r.last_seq) for r in rows]


def closed_without_transcript(
    engine: sa.Engine, closed_after: datetime.datetime, closed_before: datetime.datetime, limit: int
) -> list[OpenConversation]:
    """Closed conversations that never got a transcript row (a closer died mid-way)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(conversations.c.id, conversations.c.site_id, conversations.c.visitor_id, conversations.c.last_seq)
            .select_from(conversations.outerjoin(transcripts, transcripts.c.conversation_id == conversations.c.id))
            .where(
                conversations.c.closed_at > closed_after,
                conversations.c.closed_at < closed_before,
                transcripts.c.conversation_id.is_(None),
            )
            .limit(limit)
        ).all()
    return [OpenConversation(r.id, r.site_id, r.visitor_id, r.last_seq) for r in rows]


def archived_ids(engine: sa.Engine, conversation_id: str, message_ids: list[str]) -> set[str]:
    """Which of these lines the archive holds (by message id: a line put back into a
    rewound Redis log may carry another seq there than here)."""
    found: set[str] = set()
    with engine.connect() as conn:
        for start in range(0, len(message_ids), 1000):  # bounded IN lists
            rows = conn.execute(
                sa.select(messages.c.message_id).where(
                    messages.c.conversation_id == conversation_id,
                    messages.c.message_id.in_(message_ids[start : start + 1000]),
                )
            ).all()
            found.update(str(r.message_id) for r in rows)
    return found


@dataclass(frozen=True)
class TranscriptRows:
    conversation: Any
    messages: list[Any]
    visitor: Any | None
    pages: list[Any]


def transcript_rows(
    engine: sa.Engine, conversation_id: str, visit_lookback: datetime.timedelta, max_pages: int
) -> TranscriptRows | None:
    """Everything a Transcript is built from, in one read transaction. Pages count
    from ``visit_lookback`` before the first line (the visit that led to the chat)."""
    with engine.connect() as conn:
        conv = conn.execute(sa.select(conversations).where(conversations.c.id == conversation_id)).first()
        if conv is None:
            return None
        lines = conn.execute(
            sa.select(messages).where(messages.c.conversation_id == conversation_id).order_by(messages.c.seq)
        ).all()
        visitor = conn.execute(sa.select(visitors).where(visitors.c.id == conv.visitor_id)).first()
        end = conv.closed_at or conv.last_message_at
        pages = conn.execute(
            sa.select(page_views)
            .where(
                page_views.c.visitor_id == conv.visitor_id,
                page_views.c.viewed_at >= conv.started_at - visit_lookback,
                page_views.c.viewed_at <= end,
            )
            .order_by(page_views.c.viewed_at)
            .limit(max_pages)
        ).all()
    return TranscriptRows(conv, list(lines), visitor, list(pages))


def store_transcript(engine: sa.Engine, conversation_id: str, site_id: str, body: bytes) -> bool:
    """Store once (primary key); True if this call stored it."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.insert(transcripts)
            .prefix_with("IGNORE")
            .values(conversation_id=conversation_id, site_id=site_id, body=body, created_at=_now())
        )
        return bool(result.rowcount == 1)


def transcript_body(engine: sa.Engine, conversation_id: str) -> bytes | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(transcripts.c.body).where(transcripts.c.conversation_id == conversation_id)
        ).first()
    return bytes(row.body) if row else None


def emailed_already(engine: sa.Engine, conversation_ids: list[str], notes: list[Any]) -> tuple[set[str], set[str]]:
    """Of a batch of transcripts (by conversation id) and offline notes, those emailed
    already: (conversation ids, note message ids). New notes are stored first, once per
    message id. One transaction, two or three statements, whatever the batch size."""
    emailed_transcripts: set[str] = set()
    emailed_notes: set[str] = set()
    with engine.begin() as conn:
        if conversation_ids:
            rows = conn.execute(
                sa.select(transcripts.c.conversation_id).where(
                    transcripts.c.conversation_id.in_(conversation_ids), transcripts.c.emailed_at.is_not(None)
                )
            )
            emailed_transcripts = {row.conversation_id for row in rows}
        if notes:
            conn.execute(
                sa.insert(offline_messages).prefix_with("IGNORE"),
                [
                    {
                        "message_id": note.message_id[:64],
                        "site_id": note.site_id,
                        "visitor_id": note.visitor_id[:64],
                        "name": note.name[:200],
                        "email": note.email[:254],
                        "body": note.body,
                        "page_url": note.page_url,
                        "sent_at": from_ms(note.sent_at_ms),
                    }
                    for note in notes
                ],
            )
            ids = {note.message_id[:64]: note.message_id for note in notes}
            rows = conn.execute(
                sa.select(offline_messages.c.message_id).where(
                    offline_messages.c.message_id.in_(list(ids)), offline_messages.c.emailed_at.is_not(None)
                )
            )
            emailed_notes = {ids[row.message_id] for row in rows}
    return emailed_transcripts, emailed_notes


def mark_emailed(engine: sa.Engine, conversation_ids: list[str], note_ids: list[str]) -> None:
    """Record that these transcripts and offline notes were accepted by the SMTP server."""
    now = _now()
    with engine.begin() as conn:
        if conversation_ids:
            conn.execute(
                sa.update(transcripts)
                .where(transcripts.c.conversation_id.in_(conversation_ids), transcripts.c.emailed_at.is_(None))
                .values(emailed_at=now)
            )
        if note_ids:
            conn.execute(
                sa.update(offline_messages)
                .where(
                    offline_messages.c.message_id.in_([n[:64] for n in note_ids]),
                    offline_messages.c.emailed_at.is_(None),
                )
                .values(emailed_at=now)
            )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
