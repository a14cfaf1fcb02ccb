"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 03:21:09.007604
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("created_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("sender", sa.String(length=10), nullable=False),
        sa.Column("operator_jid", sa.String(length=255), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("internal", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("sent_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    op.create_index("ix_messages_conversation_seq", "messages", ["conversation_id", "seq"], unique=False)
    op.create_table(
        "offline_messages",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=20), nullable=False),
        sa.Column("visitor_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("page_url", sa.Text(), nullable=True),
        sa.Column("sent_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.Column("emailed_at", mysql.DATETIME(fsp=3), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    op.create_index(op.f("ix_offline_messages_site_id"), "offline_messages", ["site_id"], unique=False)
    op.create_table(
        "page_views",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("visitor_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=20), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("referrer", sa.Text(), nullable=True),
        sa.Column("viewed_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_page_views_visitor", "page_views", ["visitor_id", "viewed_at"], unique=False)
    op.create_table(
        "transcripts",
        sa.Column("conversation_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=20), nullable=False),
        sa.Column("body", mysql.MEDIUMBLOB(), nullable=False),
        sa.Column("created_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.Column("emailed_at", mysql.DATETIME(fsp=3), nullable=True),
        sa.PrimaryKeyConstraint("conversation_id"),
    )
    op.create_index(op.f("ix_transcripts_site_id"), "transcripts", ["site_id"], unique=False)
    op.create_table(
        "sites",
        sa.Column("id", sa.String(length=20), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("theme", sa.JSON(), nullable=False),
        sa.Column("transcript_emails", sa.JSON(), nullable=False),
        sa.Column("allowed_domains", sa.JSON(), nullable=False),
        sa.Column("created_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_sites_account_id"), "sites", ["account_id"], unique=False)
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=20), nullable=False),
        sa.Column("visitor_id", sa.String(length=64), nullable=False),
        sa.Column("operator_jid", sa.String(length=255), nullable=True),
        sa.Column("started_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.Column("last_message_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("closed_at", mysql.DATETIME(fsp=3), nullable=True),
        sa.Column("close_reason", sa.String(length=20), nullable=True),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_conversations_open_idle", "conversations", ["closed_at", "last_message_at"], unique=False)
    op.create_index("ix_conversations_site_started", "conversations", ["site_id", "started_at"], unique=False)
    op.create_index(op.f("ix_conversations_visitor_id"), "conversations", ["visitor_id"], unique=False)
    op.create_table(
        "operators",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("site_id", sa.String(length=20), nullable=False),
        sa.Column("jid", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        sa.Column("created_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("site_id", "jid", name="uq_operators_site_jid"),
    )
    op.create_index("ix_operators_jid", "operators", ["jid"], unique=False)
    op.create_table(
        "visitors",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("phone", sa.String(length=50), nullable=True),
        sa.Column("referrer", sa.Text(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("first_seen_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.Column("last_seen_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_visitors_site_id"), "visitors", ["site_id"], unique=False)


def downgrade() -> None:
    # Dropping a table drops its indexes; dropping an index first fails in MariaDB when a
    # foreign key needs it.
    op.drop_table("visitors")
    op.drop_table("operators")
    op.drop_table("conversations")
    op.drop_table("sites")
    op.drop_table("transcripts")
    op.drop_table("page_views")
    op.drop_table("offline_messages")
    op.drop_table("messages")
    op.drop_table("accounts")
