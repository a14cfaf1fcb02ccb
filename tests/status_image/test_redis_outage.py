"""Redis stopped: offline images keep coming, and live state returns with Redis.

Uses a redis-server of the test's own (the shared one serves other test runs)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from libs.common import state
from libs.common.settings import Settings
from libs.common.state.presence import OperatorPresence, site_status_channel
from services.status_image import metrics
from tests.redis_server import PrivateRedis
from tests.status_image.conftest import StatusServer

# A deadline, not a speed check: the refresh runs every 0.5 s and a reconnect may add a
# retry or two, but a loaded machine stretches both (bench/ measures how soon).
NOTICE_S = 30.0


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_redis_down_answers_offline_and_recovers(
    start_server: Callable[[Settings], Awaitable[StatusServer]],
    make_site: Callable[[], str],
    private_settings: Settings,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="services.status_image")
    server = await start_server(private_settings)
    site_id, other_site = make_site(), make_site()
    writer = state.connect(private_settings)
    try:
        await OperatorPresence(writer, private_settings).set_available([site_id], "ana@localhost", "laptop", True)
        await _until(lambda: server.is_online(site_id), NOTICE_S, "site never showed online")
        errors = metrics.REDIS_ERRORS._value.get()

        private_redis.kill()
        await _until(lambda: _offline(server, site_id), NOTICE_S, "still online with Redis gone")
        for _ in range(10):  # keeps answering, from memory, with images
            assert not await server.is_online(site_id)
        body = json.loads((await server.fetch(f"/status/{site_id}.json")).body)
        assert body == {"online": False, "operators_available": 0}
        # A site not seen before cannot be looked up: still an offline image, not an error.
        assert not await server.is_online(other_site)
        assert metrics.REDIS_ERRORS._value.get() > errors
        assert metrics.REDIS_UP._value.get() == 0
        assert (await server.fetch("/healthz")).code == 503
        assert any("Redis unavailable" in r.getMessage() for r in caplog.records)

        private_redis.start()  # same port, empty (--save ""): the gateway re-announces
        await writer.connection_pool.disconnect()
        await OperatorPresence(writer, private_settings).set_available([site_id], "ana@localhost", "laptop", True)
        await _until(lambda: server.is_online(site_id), NOTICE_S, "live state did not return with Redis")
        assert metrics.REDIS_UP._value.get() == 1
        assert any("Redis is back" in r.getMessage() for r in caplog.records)
        health = await server.fetch("/healthz")
        assert health.code == 200, health.body

        # The pub/sub listener resubscribed too (not only the periodic refresh works).
        async def subscribed() -> bool:
            channels = await writer.pubsub_numsub(site_status_channel(private_settings))
            return bool(channels[0][1] >= 1)

        await _until(subscribed, NOTICE_S, "the status listener did not resubscribe")
        pushed = metrics.NOTIFICATIONS.labels("status")._value.get()
        await OperatorPresence(writer, private_settings).set_available([site_id], "ana@localhost", "laptop", False)

        async def notified() -> bool:
            return bool(metrics.NOTIFICATIONS.labels("status")._value.get() > pushed)

        await _until(notified, NOTICE_S, "no pub/sub notification after Redis came back")
        assert not await server.is_online(site_id)
        # One outage, said once: stale pooled connections did not fake a second one.
        assert [r.getMessage() for r in caplog.records if "Redis" in r.getMessage()] == [
            "Redis unavailable; answering every site offline until it is back",
            "Redis is back; answering with live site states again",
        ]
    finally:
        await writer.aclose()


async def _offline(server: StatusServer, site_id: str) -> bool:
    return not await server.is_online(site_id)
