"""message ids unique per conversation; one line per (conversation, seq)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 07:50:00

Message ids were unique across all conversations in MySQL but per conversation in
Redis, so a line reusing another conversation's id was acknowledged and then dropped
by INSERT IGNORE. And after Redis reloaded an older snapshot, two different lines
could be archived under one (conversation_id, seq). ``line_seq`` is seq for lines
and NULL for internal notes (seq 0), so it can be unique per conversation. Rows that
already share a seq keep the oldest as the line; the others keep their seq but get
no line_seq (they stay readable; nothing is deleted).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("line_seq", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE messages m"
        " JOIN (SELECT conversation_id, seq, MIN(id) AS first_id FROM messages WHERE seq > 0"
        "       GROUP BY conversation_id, seq) f"
        " ON m.id = f.first_id SET m.line_seq = m.seq"
    )
    op.drop_constraint("message_id", "messages", type_="unique")
    op.create_unique_constraint("uq_messages_conversation_message", "messages", ["conversation_id", "message_id"])
    op.create_unique_constraint("uq_messages_conversation_line", "messages", ["conversation_id", "line_seq"])


def downgrade() -> None:
    op.drop_constraint("uq_messages_conversation_line", "messages", type_="unique")
    op.drop_constraint("uq_messages_conversation_message", "messages", type_="unique")
    # Ids reused across conversations cannot all stay under the old global key.
    op.execute("DELETE m FROM messages m JOIN messages o ON o.message_id = m.message_id AND o.id < m.id")
    op.create_unique_constraint("message_id", "messages", ["message_id"])
    op.drop_column("messages", "line_seq")
