"""What MySQL already holds of a conversation, for the Redis log's floor: the seq its
numbering resumes above after Redis lost data, and the archived lines to put back."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import sqlalchemy as sa

from libs.common.db import conversations, messages
from libs.common.state.conversations import FLOOR_GAP, Floor, FloorSource, chat_line, system_line

# Archived lines put back into a rewound log at most: a visitor reads the newest part
# of a conversation; the transcript has all of it.
MAX_LINES_BACK = 1000


def archived_last_seq(engine: sa.Engine, conversation_id: str) -> int:
    """The highest seq MySQL has for the conversation (0 if none): two index lookups."""
    with engine.connect() as conn:
        in_messages = conn.execute(
            sa.select(sa.func.max(messages.c.seq)).where(messages.c.conversation_id == conversation_id)
        ).scalar()
        in_conversation = conn.execute(
            sa.select(conversations.c.last_seq).where(conversations.c.id == conversation_id)
        ).scalar()
    return max(int(in_messages or 0), int(in_conversation or 0))


def archived_lines_after(engine: sa.Engine, conversation_id: str, seq: int) -> list[dict[str, Any]]:
    """Archived lines with a seq above ``seq``, as log entries, oldest first (internal
    notes never were in the log)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(messages)
            .where(messages.c.conversation_id == conversation_id, messages.c.seq > seq, messages.c.internal.is_(False))
            .order_by(messages.c.seq)
            .limit(MAX_LINES_BACK)
        ).all()
    entries = []
    for row in rows:
        sent_at_ms = int(row.sent_at.replace(tzinfo=datetime.UTC).timestamp() * 1000)
        if row.sender == "system":
            entry = system_line(row.body, sent_at_ms)
        else:
            entry = chat_line(row.sender, row.body, sent_at_ms, replaces=row.replaces_message_id)
        entries.append({**entry, "message_id": row.message_id, "seq": int(row.seq)})
    return entries


def seq_floor(engine: sa.Engine) -> FloorSource:
    """The floor of a conversation whose Redis log may have been rewound: what MySQL
    has archived plus FLOOR_GAP for lines logged but not archived yet, and the archived
    lines the log lacks. Asked once per conversation per Redis restart."""

    def read(conversation_id: str, log_max: int) -> Floor:
        last = archived_last_seq(engine, conversation_id)
        lines = archived_lines_after(engine, conversation_id, log_max) if last > log_max else []
        return Floor(last + FLOOR_GAP, lines)

    async def floor(conversation_id: str, log_max: int) -> Floor:
        return await asyncio.to_thread(read, conversation_id, log_max)

    return floor
