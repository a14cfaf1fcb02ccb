"""Writing chat history to MySQL in batches, idempotently (no AMQP here).

A ``Batch`` gathers what a run of messages means for each table (message lines, page
views, visitors, conversations), merging rows that touch the same visitor or
conversation, so a batch of any size is at most four statements in one transaction:

* ``messages`` and ``page_views``: multi-row ``INSERT IGNORE`` on their unique event
  ids (a message's id is unique per conversation), so a redelivered message is not
  stored twice; a line whose (conversation, seq) another line already holds is not
  stored either, and is logged and counted (it cannot happen unless the Redis log
  handed out a seq twice, which its floor prevents);
* ``visitors`` and ``conversations``: multi-row ``INSERT … ON DUPLICATE KEY UPDATE``
  whose updates only ever move towards the truth (earliest start, latest activity,
  highest seq, first referrer, newest name), so the order in which batches commit,
  and repeats, do not matter.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.dialects import mysql

from libs.common.db import conversations, messages, page_views, visitors

log = logging.getLogger(__name__)

SEQ_CONFLICTS = Counter(
    "habla_archive_seq_conflicts_total", "Lines not archived because another line holds their (conversation, seq)"
)

SENDERS = {1: "visitor", 2: "operator", 3: "system"}

# Operator commands that say something about the visitor (OperatorAction.value).
_VISITOR_FIELD_ACTIONS = {"name": "name", "email": "email", "phone": "phone"}
# Operator actions that make the operator part of the conversation.
_OPERATOR_ACTIONS = {"joined", "transfer", "name", "email", "phone", "push", "end", "block"}

# Column widths from libs/common/db (longer values are cut rather than failing a batch).
_NAME_MAX, _EMAIL_MAX, _PHONE_MAX = 200, 254, 50


def from_ms(ms: int) -> datetime.datetime:
    """A naive UTC datetime (the DATETIME(3) columns hold UTC)."""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).replace(tzinfo=None)


def to_ms(moment: datetime.datetime) -> int:
    return int(moment.replace(tzinfo=datetime.UTC).timestamp() * 1000)


def _cut(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else None


@dataclass
class Batch:
    """What a run of archived messages writes, merged per row key."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    page_views: list[dict[str, Any]] = field(default_factory=list)
    visitors: dict[str, dict[str, Any]] = field(default_factory=dict)
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    size: int = 0

    def add(self, struct: Any, event_id: str) -> None:
        """Add one decoded struct; ``event_id`` is its AMQP message id."""
        kind = type(struct).__name__
        if kind == "ChatMessage":
            self._chat_message(struct)
        elif kind == "PageView":
            self._page_view(struct, event_id)
        elif kind == "VisitorEvent":
            self._visitor_event(struct)
        elif kind == "OperatorAction":
            self._operator_action(struct)
        else:
            raise ValueError(f"the archive does not store {kind} messages")
        self.size += 1

    def _chat_message(self, m: Any) -> None:
        sent_at = from_ms(m.sent_at_ms)
        self.messages.append(
            {
                "message_id": m.message_id[:64],
                "conversation_id": m.conversation_id[:64],
                "seq": m.seq,
                "line_seq": m.seq if m.seq > 0 else None,
                "sender": SENDERS.get(int(m.sender), "system"),
                "operator_jid": _cut(m.operator_jid, 255),
                "body": m.body,
                "internal": bool(m.internal),
                "sent_at": sent_at,
                "replaces_message_id": m.replaces_message_id[:64] if m.replaces_message_id else None,
            }
        )
        self._conversation(m.conversation_id, m.site_id, m.visitor_id, sent_at, m.seq, m.operator_jid)
        self._visitor(m.visitor_id, m.site_id, sent_at)

    def _page_view(self, p: Any, event_id: str) -> None:
        viewed_at = from_ms(p.viewed_at_ms)
        self.page_views.append(
            {
                "event_id": event_id[:64],
                "visitor_id": p.visitor_id[:64],
                "site_id": p.site_id,
                "url": p.url,
                "title": p.title,
                "referrer": p.referrer or None,
                "viewed_at": viewed_at,
            }
        )
        self._visitor(p.visitor_id, p.site_id, viewed_at, referrer=p.referrer or None, user_agent=p.user_agent)

    def _visitor_event(self, e: Any) -> None:
        at = from_ms(e.at_ms)
        self._visitor(e.visitor_id, e.site_id, at, name=e.name, email=e.email, phone=e.phone)

    def _operator_action(self, a: Any) -> None:
        at = from_ms(a.at_ms)
        if a.action in _VISITOR_FIELD_ACTIONS and a.value:
            self._visitor(a.visitor_id, a.site_id, at, **{_VISITOR_FIELD_ACTIONS[a.action]: a.value})
        if a.action in _OPERATOR_ACTIONS and a.conversation_id:
            self._conversation(a.conversation_id, a.site_id, a.visitor_id, at, 0, a.operator_jid)

    def _conversation(
        self, conversation_id: str, site_id: str, visitor_id: str, at: datetime.datetime, seq: int, jid: str | None
    ) -> None:
        row = self.conversations.get(conversation_id)
        if row is None:
            self.conversations[conversation_id] = {
                "id": conversation_id[:64],
                "site_id": site_id,
                "visitor_id": visitor_id[:64],
                "operator_jid": _cut(jid, 255),
                "started_at": at,
                "last_message_at": at,
                "last_seq": max(seq, 0),
            }
            return
        row["started_at"] = min(row["started_at"], at)
        row["last_message_at"] = max(row["last_message_at"], at)
        row["last_seq"] = max(row["last_seq"], seq)
        row["operator_jid"] = row["operator_jid"] or _cut(jid, 255)

    def _visitor(
        self,
        visitor_id: str,
        site_id: str,
        at: datetime.datetime,
        *,
        name: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        referrer: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        row = self.visitors.setdefault(
            visitor_id,
            {
                "id": visitor_id[:64],
                "site_id": site_id,
                "name": None,
                "email": None,
                "phone": None,
                "referrer": None,
                "user_agent": None,
                "first_seen_at": at,
                "last_seen_at": at,
            },
        )
        row["first_seen_at"] = min(row["first_seen_at"], at)
        row["last_seen_at"] = max(row["last_seen_at"], at)
        # Newest identity wins; the first referrer and user agent of the visit stay.
        row["name"] = _cut(name, _NAME_MAX) or row["name"]
        row["email"] = _cut(email, _EMAIL_MAX) or row["email"]
        row["phone"] = _cut(phone, _PHONE_MAX) or row["phone"]
        row["referrer"] = row["referrer"] or referrer
        row["user_agent"] = row["user_agent"] or user_agent


def write_batch(conn: sa.Connection, batch: Batch) -> None:
    """Write ``batch`` with at most four statements (call inside a transaction).

    Each statement is an executemany that SQLAlchemy's "insertmanyvalues" sends as one
    multi-row INSERT (up to 1000 rows per statement, more than a batch holds), from a
    statement compiled once and cached: compiling a fresh 200-row VALUES clause per
    batch cost more than MySQL's own work."""
    # Visitors and conversations first: nothing references them by foreign key, but a
    # reader that sees a message should find its conversation.
    if batch.visitors:
        stmt = mysql.insert(visitors)
        new = stmt.inserted
        conn.execute(
            stmt.on_duplicate_key_update(
                name=sa.func.coalesce(new.name, visitors.c.name),
                email=sa.func.coalesce(new.email, visitors.c.email),
                phone=sa.func.coalesce(new.phone, visitors.c.phone),
                referrer=sa.func.coalesce(visitors.c.referrer, new.referrer),
                user_agent=sa.func.coalesce(visitors.c.user_agent, new.user_agent),
                first_seen_at=sa.func.least(visitors.c.first_seen_at, new.first_seen_at),
                last_seen_at=sa.func.greatest(visitors.c.last_seen_at, new.last_seen_at),
            ),
            list(batch.visitors.values()),
        )
    if batch.conversations:
        stmt = mysql.insert(conversations)
        new = stmt.inserted
        conn.execute(
            stmt.on_duplicate_key_update(
                started_at=sa.func.least(conversations.c.started_at, new.started_at),
                last_message_at=sa.func.greatest(conversations.c.last_message_at, new.last_message_at),
                last_seq=sa.func.greatest(conversations.c.last_seq, new.last_seq),
                operator_jid=sa.func.coalesce(conversations.c.operator_jid, new.operator_jid),
            ),
            list(batch.conversations.values()),
        )
    if batch.messages:
        inserted = conn.execute(sa.insert(messages).prefix_with("IGNORE"), batch.messages).rowcount
        if inserted is not None and 0 <= inserted < len(batch.messages):
            _report_seq_conflicts(conn, batch.messages)
    if batch.page_views:
        conn.execute(sa.insert(page_views).prefix_with("IGNORE"), batch.page_views)


def _report_seq_conflicts(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Fewer rows than sent: repeats (normal after a redelivery) or seq conflicts. One
    query tells them apart; only runs when the count is short."""
    wanted = {(r["conversation_id"], r["message_id"]) for r in rows}
    stored = conn.execute(
        sa.select(messages.c.conversation_id, messages.c.message_id).where(
            sa.tuple_(messages.c.conversation_id, messages.c.message_id).in_(list(wanted))
        )
    ).all()
    lost = wanted - {(r.conversation_id, r.message_id) for r in stored}
    if lost:
        SEQ_CONFLICTS.inc(len(lost))
        log.error(
            "lines not archived: another line holds their seq",
            extra={"count": len(lost), "lines": ", ".join(f"{c}/{m}" for c, m in sorted(lost)[:10])},
        )


def write(engine: sa.Engine, batch: Batch) -> None:
    """One transaction; returns only once MySQL has committed it."""
    with engine.begin() as conn:
        write_batch(conn, batch)
