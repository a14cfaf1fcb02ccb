"""Fixtures against the real local servers, isolated per test run.

* RabbitMQ: a vhost of its own (habla-test-<run>), deleted at the end.
* Redis: a key prefix of its own (habla-test-<run>:), keys deleted at the end.
* MariaDB: a database of its own (habla_test_<run>), migrated, dropped at the end.
* Prosody: one per session on free ports with its own data folder (tools/prosody.py).

Several runs (other worktrees, CI) can share the servers at once.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import db, state
from libs.common.messaging import Bus
from libs.common.settings import Settings
from tools import prosody, sandbox

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    """Settings pointing at this run's own vhost, Redis prefix and migrated database."""
    box = sandbox.create(
        "test",
        # Short retry delays keep the retry tests fast; the mechanism is the same.
        amqp_retry_delays_ms="100,200",
        secret_key=f"test-secret-{uuid.uuid4().hex}",
    )
    yield box.settings
    sandbox.remove(box)


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[sa.Engine]:
    eng = db.engine(settings)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = state.connect(settings)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def make_bus(settings: Settings) -> AsyncIterator[Callable[[str], Awaitable[Bus]]]:
    """Factory for connected buses (topology declared); each is closed after the test."""
    opened: list[Bus] = []

    async def make(name: str = "test") -> Bus:
        bus = await Bus.connect(settings, name)
        await bus.declare_topology()
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        await bus.close()


@pytest.fixture(scope="session")
def prosody_server(settings: Settings) -> Iterator[prosody.ProsodyConfig]:
    """A Prosody of this run's own, on free ports, with a fresh data folder."""
    cfg = sandbox.prosody_config(settings)
    process = prosody.start(cfg)
    yield cfg
    prosody.stop(process)
    shutil.rmtree(cfg.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def xmpp_settings(settings: Settings, prosody_server: prosody.ProsodyConfig) -> Settings:
    """Settings whose XMPP ports point at this run's Prosody."""
    return sandbox.with_prosody_ports(settings, prosody_server)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests save screenshots and other things a person may want to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
