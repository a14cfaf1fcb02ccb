"""What MySQL already holds of a conversation, for the Redis log's seq floor."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from libs.common.db import conversations, messages
from libs.common.state.conversations import FLOOR_GAP, FloorSource


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


def seq_floor(engine: sa.Engine) -> FloorSource:
    """The floor a conversation's numbering resumes above after Redis lost data: what
    MySQL has archived plus FLOOR_GAP for lines logged but not archived yet. Asked once
    per conversation per Redis restart (libs.common.state.conversations)."""

    async def floor(conversation_id: str) -> int:
        return await asyncio.to_thread(archived_last_seq, engine, conversation_id) + FLOOR_GAP

    return floor
