"""MySQL (MariaDB) storage: table definitions, the engine, and the migration runner.

Tables are SQLAlchemy Core (no ORM): services run explicit statements they can count
and batch. Schema changes go through Alembic migrations in ./migrations; the tables
here must match the newest migration (a test compares them).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from libs.common.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"

metadata = sa.MetaData()

# DATETIME(3): millisecond times, always UTC, as in the Thrift contracts.
Timestamp = mysql.DATETIME(fsp=3)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("email", sa.String(254), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=True),  # NULL: made by the CLI, cannot log in yet
    sa.Column("created_at", Timestamp, nullable=False),
)

sites = sa.Table(
    "sites",
    metadata,
    sa.Column("id", sa.String(20), primary_key=True),  # 4324-24618-10-8812
    sa.Column(
        "account_id", sa.BigInteger, sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("theme", sa.JSON, nullable=False),  # colours and texts; validated by the console
    sa.Column("transcript_emails", sa.JSON, nullable=False),  # list of addresses
    sa.Column("allowed_domains", sa.JSON, nullable=False),  # list of host names; empty = any
    sa.Column("created_at", Timestamp, nullable=False),
    # The XMPP component domain whose gateway serves the site; NULL: the default one
    # (HABLA_XMPP_DEFAULT_COMPONENT_DOMAIN). Migration 0003.
    sa.Column("xmpp_domain", sa.String(190), nullable=True, index=True),
)

operators = sa.Table(
    "operators",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("site_id", sa.String(20), sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False),
    sa.Column("jid", sa.String(255), nullable=False),  # bare JID, lower-cased
    sa.Column("display_name", sa.String(100), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("site_id", "jid", name="uq_operators_site_jid"),
    sa.Index("ix_operators_jid", "jid"),
)

visitors = sa.Table(
    "visitors",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("site_id", sa.String(20), sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=True),
    sa.Column("email", sa.String(254), nullable=True),
    sa.Column("phone", sa.String(50), nullable=True),
    sa.Column("referrer", sa.Text, nullable=True),
    sa.Column("user_agent", sa.Text, nullable=True),
    sa.Column("first_seen_at", Timestamp, nullable=False),
    sa.Column("last_seen_at", Timestamp, nullable=False),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("site_id", sa.String(20), sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False),
    sa.Column("visitor_id", sa.String(64), nullable=False, index=True),
    sa.Column("operator_jid", sa.String(255), nullable=True),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("last_message_at", Timestamp, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("closed_at", Timestamp, nullable=True),
    sa.Column("close_reason", sa.String(20), nullable=True),
    sa.Index("ix_conversations_site_started", "site_id", "started_at"),
    sa.Index("ix_conversations_open_idle", "closed_at", "last_message_at"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    # The client's id, unique per conversation as in the Redis log (a browser may reuse
    # an id in another conversation): INSERT IGNORE on it makes archiving idempotent.
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("conversation_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    # seq for lines of the conversation, NULL for internal notes (seq 0, any number of
    # them): unique per conversation, so the archive never holds two lines under one seq.
    sa.Column("line_seq", sa.BigInteger, nullable=True),
    sa.Column("sender", sa.String(10), nullable=False),  # visitor | operator | system
    sa.Column("operator_jid", sa.String(255), nullable=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("internal", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("sent_at", Timestamp, nullable=False),
    # A correction (XEP-0308) is a row of its own naming the line it edits; the
    # original row is never changed, so the archive keeps what was first sent.
    sa.Column("replaces_message_id", sa.String(64), nullable=True),
    sa.Index("ix_messages_conversation_seq", "conversation_id", "seq"),
    sa.UniqueConstraint("conversation_id", "message_id", name="uq_messages_conversation_message"),
    sa.UniqueConstraint("conversation_id", "line_seq", name="uq_messages_conversation_line"),
)

page_views = sa.Table(
    "page_views",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),  # AMQP message id: idempotent
    sa.Column("visitor_id", sa.String(64), nullable=False),
    sa.Column("site_id", sa.String(20), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("title", sa.Text, nullable=True),
    sa.Column("referrer", sa.Text, nullable=True),
    sa.Column("viewed_at", Timestamp, nullable=False),
    sa.Index("ix_page_views_visitor", "visitor_id", "viewed_at"),
)

transcripts = sa.Table(
    "transcripts",
    metadata,
    sa.Column("conversation_id", sa.String(64), primary_key=True),
    sa.Column("site_id", sa.String(20), nullable=False, index=True),
    sa.Column("body", mysql.MEDIUMBLOB, nullable=False),  # the Transcript struct, Thrift compact
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("emailed_at", Timestamp, nullable=True),
)

offline_messages = sa.Table(
    "offline_messages",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(64), nullable=False, unique=True),
    sa.Column("site_id", sa.String(20), nullable=False, index=True),
    sa.Column("visitor_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(254), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("page_url", sa.Text, nullable=True),
    sa.Column("sent_at", Timestamp, nullable=False),
    sa.Column("emailed_at", Timestamp, nullable=True),
)


# A transcript address waiting for its owner to follow the link we mailed it: only
# confirmed addresses are in sites.transcript_emails (where transcripts and offline
# notes go), so nobody can make Habla mail a stranger. The token is stored hashed: the
# table alone confirms nothing.
transcript_confirmations = sa.Table(
    "transcript_confirmations",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("site_id", sa.String(20), sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False),
    sa.Column("email", sa.String(254), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("site_id", "email", name="uq_transcript_confirmations_site_email"),
)


def engine(settings: Settings, **kwargs: object) -> sa.Engine:
    # pool_pre_ping: a MariaDB restart must not hand out dead connections;
    # pool_recycle below MariaDB's default wait_timeout (8 h).
    return sa.create_engine(settings.mysql_url, pool_pre_ping=True, pool_recycle=3600, **kwargs)


def alembic_config(settings: Settings) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is ConfigParser-based: a literal % must be doubled.
    config.set_main_option("sqlalchemy.url", settings.mysql_url.replace("%", "%%"))
    return config


def ensure_database(settings: Settings) -> None:
    """Create the database named in HABLA_MYSQL_URL if it does not exist yet."""
    url = sa.make_url(settings.mysql_url)
    name = url.database
    if not name:
        raise ValueError("HABLA_MYSQL_URL must name a database, e.g. mysql+pymysql://root:@127.0.0.1:3306/habla")
    # set(database=None) keeps the old name in SQLAlchemy 2.1; "" clears it.
    server = sa.create_engine(url.set(database=""))
    with server.begin() as conn:
        conn.execute(
            sa.text(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        )
    server.dispose()


def migrate(settings: Settings, revision: str = "head") -> None:
    """Create the database if needed and upgrade it to ``revision``."""
    from alembic import command

    ensure_database(settings)
    command.upgrade(alembic_config(settings), revision)  # type: ignore[arg-type]


def downgrade(settings: Settings, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(settings), revision)  # type: ignore[arg-type]
