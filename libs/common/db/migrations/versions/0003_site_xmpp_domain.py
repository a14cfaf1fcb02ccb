"""sites.xmpp_domain: which gateway (component domain) serves a site

Revision ID: 0003
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: instant on MariaDB, and NULL means "the default domain"
    # (HABLA_XMPP_DEFAULT_COMPONENT_DOMAIN), so existing sites stay where they are.
    # 190 characters: the longest queue name built from it stays under AMQP's 255.
    op.add_column("sites", sa.Column("xmpp_domain", sa.String(length=190), nullable=True))
    op.create_index("ix_sites_xmpp_domain", "sites", ["xmpp_domain"])


def downgrade() -> None:
    op.drop_index("ix_sites_xmpp_domain", table_name="sites")
    op.drop_column("sites", "xmpp_domain")
