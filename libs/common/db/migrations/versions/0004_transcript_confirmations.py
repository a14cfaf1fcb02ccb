"""transcript_confirmations: a new transcript address gets mail only after its link is followed

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Addresses already in sites.transcript_emails stay there: they were entered by the
    # owner before confirmation existed; every address added from now on waits here.
    op.create_table(
        "transcript_confirmations",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("site_id", sa.String(20), sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("created_at", mysql.DATETIME(fsp=3), nullable=False),
        sa.UniqueConstraint("site_id", "email", name="uq_transcript_confirmations_site_email"),
    )


def downgrade() -> None:
    op.drop_table("transcript_confirmations")
