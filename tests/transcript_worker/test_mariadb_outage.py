"""MariaDB stopped and restarted during a stream of messages: the archive stops
acknowledging, retries, and catches up: every message stored, none twice.

Uses a private mariadbd (own datadir, port, socket), never the shared server."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import db, topology
from libs.common.db import messages, site_store
from libs.common.settings import Settings
from tests.transcript_worker.conftest import Chat, SmtpServer, eventually, running_worker
from tests.transcript_worker.private_mariadb import PrivateMariaDB

pytestmark = pytest.mark.slow


@pytest.fixture
def private_mariadb() -> Iterator[PrivateMariaDB]:
    server = PrivateMariaDB()
    server.start()
    yield server
    server.remove()


async def test_archive_survives_a_mariadb_restart_losing_and_doubling_nothing(
    worker_settings: Settings, redis_client: aioredis.Redis, smtp: SmtpServer, private_mariadb: PrivateMariaDB, make_bus
) -> None:
    settings = dataclasses.replace(worker_settings, mysql_url=private_mariadb.url("habla_outage"))
    await asyncio.to_thread(db.migrate, settings)
    engine = db.engine(settings)
    with engine.begin() as conn:
        account = site_store.account_for_email(conn, "owner@outage.example")
        site_id = site_store.create_site(conn, account, "Outage shop").id
    bus = await make_bus("outage")
    chats = [Chat(bus, redis_client, settings, site_id, "nobody") for _ in range(3)]
    sent: list[str] = []
    total_per_phase = 60

    async def stream(count: int) -> None:
        for i in range(count):
            message = await chats[i % len(chats)].visitor_says(f"line {len(sent)}")
            sent.append(message.message_id)
            if i % 10 == 0:
                # Repeats, as a redelivery or a client retry would produce.
                await bus.publish(topology.VISITOR, f"{site_id}.message", message)
            await asyncio.sleep(0.005)

    def stored() -> tuple[int, int]:
        with engine.connect() as conn:
            rows, distinct = conn.execute(
                sa.select(sa.func.count(), sa.func.count(sa.distinct(messages.c.message_id)))
            ).one()
        return int(rows), int(distinct)

    async with running_worker(settings, redis_client, engine, "outage") as worker:
        await stream(total_per_phase)
        await eventually(lambda: asyncio.to_thread(lambda: stored()[0] == total_per_phase), what="first phase stored")

        await asyncio.to_thread(private_mariadb.stop)
        await stream(total_per_phase)  # published while MariaDB is down
        await asyncio.sleep(1.0)  # let the archive fail and back off
        assert worker.archive is not None and worker.archive.batcher.failures > 0
        await asyncio.to_thread(private_mariadb.start)
        await stream(total_per_phase)

        expected = 3 * total_per_phase
        await eventually(
            lambda: asyncio.to_thread(lambda: stored()[0] >= expected), wait_s=60, what="catch up after restart"
        )
        await asyncio.sleep(0.5)
    rows, distinct = stored()
    engine.dispose()
    assert (rows, distinct) == (expected, expected)
    assert len(set(sent)) == expected
