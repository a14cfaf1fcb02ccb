"""messages.replaces_message_id: corrections (XEP-0308) as rows of their own

Revision ID: 0005
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: adding it is instant on MariaDB (no table rebuild), and
    # every existing row is an original line.
    op.add_column("messages", sa.Column("replaces_message_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "replaces_message_id")
