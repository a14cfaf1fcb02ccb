"""Fixtures against the real local servers, isolated per test run.

* RabbitMQ: a vhost of its own (habla-test-<run>), deleted at the end.
* Redis: a key prefix of its own (habla-test-<run>:), keys deleted at the end.
* MariaDB: a database of its own (habla_test_<run>), migrated, dropped at the end.
* Prosody: one per session on free ports with its own data folder (tools/prosody.py).

Several runs (other worktrees, CI) can share the servers at once.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import db, state
from libs.common.messaging import Bus
from libs.common.settings import Settings
from tools import prosody

RUN = uuid.uuid4().hex[:8]
ARTIFACTS = Path(__file__).parent / "artifacts"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def vhost() -> Iterator[str]:
    name = f"habla-test-{RUN}"
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    _rabbitmqctl("delete_vhost", name)


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    name = f"habla_test_{RUN}"
    yield name
    server = sa.create_engine("mysql+pymysql://root:@127.0.0.1:3306/")
    with server.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    server.dispose()


@pytest.fixture(scope="session")
def settings(vhost: str, database: str) -> Settings:
    """Settings pointing at this run's isolated corner of every server, migrated."""
    test_settings = Settings.from_env(
        amqp_url=f"amqp://guest:guest@127.0.0.1:5672/{urllib.parse.quote(vhost, safe='')}",
        redis_prefix=f"habla-test-{RUN}:",
        mysql_url=f"mysql+pymysql://root:@127.0.0.1:3306/{database}?charset=utf8mb4",
        frontend_id=f"test-{RUN}",
        # Short retry delays keep the retry tests fast; the mechanism is the same.
        amqp_retry_delays_ms="100,200",
        secret_key=f"test-secret-{RUN}",
    )
    db.migrate(test_settings)
    return test_settings


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
    folder = Path(tempfile.mkdtemp(prefix="habla-prosody-"))
    cfg = prosody.ProsodyConfig(
        dir=folder,
        domain=settings.xmpp_domain,
        component_domain=settings.xmpp_component_domain,
        component_secret=settings.xmpp_component_secret,
        c2s_port=prosody.free_port(),
        component_port=prosody.free_port(),
    )
    process = prosody.start(cfg)
    yield cfg
    prosody.stop(process)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def xmpp_settings(settings: Settings, prosody_server: prosody.ProsodyConfig) -> Settings:
    """Settings whose XMPP ports point at this run's Prosody."""
    import dataclasses

    return dataclasses.replace(
        settings, xmpp_component_port=prosody_server.component_port, xmpp_c2s_port=prosody_server.c2s_port
    )


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests save screenshots and other things a person may want to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
