"""Fixtures against the real local servers, isolated per test run.

* RabbitMQ: a vhost of its own (habla-pool-<run>-<n>, from a pool), deleted at the end.
* Redis: a key prefix of its own (habla-test-<run>:), keys deleted at the end.
* MariaDB: a database of its own (habla_test_<run>), migrated, dropped at the end.
* Prosody: one per session on free ports with its own data folder (tools/prosody.py).

Several runs (other worktrees, CI) can share the servers at once, and each pytest-xdist
worker of ``make test`` is a run of its own.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from libs.common import db, state
from libs.common.messaging import Bus
from libs.common.settings import Settings
from libs.common.state.shared import SharedConnection
from tools import prosody, sandbox

ARTIFACTS = Path(__file__).parent / "artifacts"
# Sandboxes per pool refill: a serial run makes about 13, each of 3 xdist workers 4-5.
VHOST_BATCH = 5


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 3 --dist worksteal``) the slow tests
    go first, one share of them at the head of each worker's part of the run.

    worksteal hands each worker a contiguous part of the collection and idle workers
    steal from the tail of the others': a minute-long test collected last would run
    alone at the end. Parts are cut as xdist's scheduler cuts them (n // workers from
    the front, then the rest in equal parts); the slow tests are dealt round them
    longest-looking first (their own timeout is the suite's only guess at a length).
    The other tests keep their order, so each part runs whole modules and the
    session fixtures' groups (e.g. the ejabberd tests) stay together. Without xdist
    (PYTEST_XDIST_WORKER_COUNT unset) the order is pytest's own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2:
        return

    def timeout(item: pytest.Item) -> float:
        marker = item.get_closest_marker("timeout")
        return float(marker.args[0]) if marker and marker.args else 0.0

    slow = sorted((item for item in items if item.get_closest_marker("slow")), key=timeout, reverse=True)
    rest = [item for item in items if not item.get_closest_marker("slow")]
    sizes, left = [], len(items)
    for k in range(workers):
        sizes.append(left // (workers - k))
        left -= sizes[-1]
    ordered: list[pytest.Item] = []
    for k, size in enumerate(sizes):
        head = slow[k::workers]
        ordered += head + rest[: max(size - len(head), 0)]
        rest = rest[max(size - len(head), 0) :]
    items[:] = ordered + rest


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    """Settings pointing at this run's own vhost, Redis prefix and migrated database.

    This run's sandboxes (this one, each isolated gateway's and stack's) take their
    vhosts from a pool made a few per rabbitmqctl call, all deleted in one at the end."""
    sandbox.pool_vhosts(VHOST_BATCH)
    box = sandbox.create(
        "test",
        # Short retry delays keep the retry tests fast; the mechanism is the same.
        amqp_retry_delays_ms="100,200",
        secret_key=f"test-secret-{uuid.uuid4().hex}",
    )
    yield box.settings
    sandbox.remove(box)
    sandbox.unpool()


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[sa.Engine]:
    eng = db.engine(settings)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
async def redis_client(settings: Settings) -> AsyncIterator[SharedConnection]:
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
