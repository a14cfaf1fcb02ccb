"""A connection's position in a visitor's conversations: "everything after seq N".

The widget keeps (conversation id, last seq) and sends it on every (re)connect, to
any instance; ``catch_up`` answers with exactly the entries after that point. When
the visitor's session moves on to a new conversation, the tail of the old one (e.g.
"The chat has ended.") is sent first, then the new one from its start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.rpc_frontend.chat import Visitor, VisitorChat
from services.rpc_frontend.inputs import seq_argument

# Entries per read; a widget far behind gets the rest on the next read, at once.
BATCH = 500


@dataclass
class Cursor:
    conversation_id: str = ""
    after: int = 0


async def resume_cursor(chat: VisitorChat, visitor: Visitor, conversation_id: str, after: int) -> Cursor:
    """The client's claimed position, if it may read that conversation; else a fresh start."""
    if conversation_id and await chat.owns(visitor, conversation_id):
        return Cursor(conversation_id, max(after, 0))
    return Cursor()


async def cursor_from_query(chat: VisitorChat, visitor: Visitor, query: Callable[[str, str], str]) -> Cursor:
    """``resume_cursor`` for ?conversation_id=…&after=N (``query`` = a handler's
    get_query_argument); Invalid if ``after`` is not a plausible sequence number."""
    after = seq_argument(query("after", "0"))
    return await resume_cursor(chat, visitor, query("conversation_id", ""), after)


async def catch_up(
    chat: VisitorChat, visitor_id: str, cursor: Cursor, *, check_session: bool = True
) -> list[dict[str, Any]]:
    """Events with every log entry after ``cursor`` (advancing it).

    check_session=False skips looking for a newer conversation in the session: right
    for a wake-up about the conversation the cursor is already in (the common case,
    one Redis read instead of two); a new conversation always comes with a wake-up
    naming it.
    """
    if check_session or not cursor.conversation_id:
        session = await chat.sessions.get(visitor_id) or {}
        current = session.get("conversation_id", "")
    else:
        current = cursor.conversation_id
    events: list[dict[str, Any]] = []
    while True:
        if cursor.conversation_id:
            entries = await chat.log.after(cursor.conversation_id, cursor.after, BATCH)
            if entries:
                cursor.after = int(entries[-1]["seq"])
                events.append({"type": "entries", "conversation_id": cursor.conversation_id, "entries": entries})
                if len(entries) == BATCH:
                    continue
        if current and current != cursor.conversation_id:
            await chat.claim(visitor_id, current)  # the gateway may have opened it
            cursor.conversation_id, cursor.after = current, 0
            continue
        return events
