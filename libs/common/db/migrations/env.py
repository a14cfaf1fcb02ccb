"""Alembic environment: runs migrations online against HABLA_MYSQL_URL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from libs.common.db import metadata

config = context.config
target_metadata = metadata

connectable = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=sa.pool.NullPool)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
connectable.dispose()
