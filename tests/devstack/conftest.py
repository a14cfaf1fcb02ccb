"""Fixtures for the dev-stack tests."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from libs.common.settings import Settings
from tools import sandbox
from tools.prosody import free_port


@pytest.fixture
def stack_settings(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """This run's vhost, plus a database, Redis prefix, state folder and ports of its own."""
    run = uuid.uuid4().hex[:8]
    database = f"habla_devstack_{run}"
    ports: dict[str, Any] = {f.name: free_port() for f in dataclasses.fields(Settings) if f.name.endswith("_port")}
    stack = dataclasses.replace(
        settings,
        redis_prefix=f"habla-devstack-{run}:",
        mysql_url=sa.make_url(settings.mysql_url).set(database=database).render_as_string(hide_password=False),
        state_dir=str(tmp_path / "state"),
        # As on a fresh checkout with no HABLA_SECRET_KEY: `make run` makes its own.
        secret_key=Settings.from_env({}).secret_key,
        public_url=f"http://127.0.0.1:{ports['frontend_port']}",
        status_public_url=f"http://127.0.0.1:{ports['status_port']}",
        **ports,
    )
    yield stack
    client = redis.Redis.from_url(stack.redis_url)
    keys = list(client.scan_iter(match=f"{stack.redis_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    server = sa.create_engine(sandbox.SERVER_URL)
    with server.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{database}`"))
    server.dispose()
