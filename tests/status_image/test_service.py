"""The status image server against this run's real Redis and MariaDB."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import state
from libs.common.db import sites
from libs.common.settings import Settings
from libs.common.sitedir import MISSING_TTL_S, SiteConfig, SiteDirectory
from libs.common.state.presence import OperatorPresence, SiteStatusReader, site_status_channel, site_status_key
from services.status_image import cache as cache_module
from services.status_image import metrics
from services.status_image.cache import IDLE_EVICT_S, SiteStatusCache
from services.status_image.render import ImageRenderer
from tests.redis_server import one_more_subscriber
from tests.status_image.conftest import StatusServer, top_colour
from tools.prosody import free_port

Start = Callable[..., Awaitable[StatusServer]]

# A deadline for what a test waits on, not a promise of speed (bench/ measures how soon
# a change shows): generous, so a loaded machine does not fail a test that works.
DEADLINE_S = 30.0
# Longer than any test: a loop that sleeps this long does not run during the test.
NEVER_S = 3600.0


async def _wait_for(server: StatusServer, site_id: str, online: bool) -> None:
    """Poll the image until it shows ``online``."""
    deadline = time.monotonic() + DEADLINE_S
    while await server.is_online(site_id) != online:
        assert time.monotonic() < deadline, f"image still not {'online' if online else 'offline'}"
        await asyncio.sleep(0.02)


async def test_image_and_json_flip_on_the_announcement_when_operators_come_and_go(
    start_server: Start,
    make_site: Callable[[], str],
    settings: Settings,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Operators coming and going are announced (pub/sub) and the image follows the
    announcement: the periodic refresh, which would also notice, does not run here."""
    monkeypatch.setattr(cache_module, "REFRESH_INTERVAL_S", NEVER_S)
    # Subscribed before the first change: a missed announcement has no refresh to catch it.
    async with one_more_subscriber(redis_client, site_status_channel(settings)):
        server = await start_server(settings)
    site_id = make_site()
    pushed = metrics.NOTIFICATIONS.labels("status")._value.get()
    presence = OperatorPresence(redis_client, settings)
    assert not await server.is_online(site_id)
    assert json.loads((await server.fetch(f"/status/{site_id}.json")).body) == {
        "online": False,
        "operators_available": 0,
    }

    await presence.set_available([site_id], "ana@localhost", "laptop", True)
    await _wait_for(server, site_id, online=True)
    await presence.set_available([site_id], "bo@localhost", "phone", True)
    deadline = time.monotonic() + DEADLINE_S
    while (body := json.loads((await server.fetch(f"/status/{site_id}.json")).body))["operators_available"] != 2:
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.02)
    assert body == {"online": True, "operators_available": 2}

    await presence.set_available([site_id], "ana@localhost", "laptop", False)
    await presence.set_available([site_id], "bo@localhost", "phone", False)
    await _wait_for(server, site_id, online=False)
    assert metrics.NOTIFICATIONS.labels("status")._value.get() - pushed >= 4


async def test_missed_notifications_and_expired_status_are_noticed_by_the_refresh(
    start_server: Start, make_site: Callable[[], str], settings: Settings, redis_client: aioredis.Redis
) -> None:
    """The gateway's status key can change without an announcement (it expires when the
    gateway dies; a pub/sub message can be lost): the periodic refresh catches both."""
    server = await start_server(settings)
    site_id = make_site()
    assert not await server.is_online(site_id)
    corrections = metrics.REFRESH_CHANGES._value.get()
    # Written directly, without PUBLISH: only the refresh can see it.
    await redis_client.set(site_status_key(settings, site_id), json.dumps({"online": True, "operators_available": 1}))
    await _wait_for(server, site_id, online=True)
    await redis_client.delete(site_status_key(settings, site_id))  # as if it expired
    await _wait_for(server, site_id, online=False)
    assert metrics.REFRESH_CHANGES._value.get() - corrections >= 2


async def test_a_saved_theme_shows_on_its_invalidation(
    start_server: Start,
    make_site: Callable[[], str],
    settings: Settings,
    engine: sa.Engine,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The console's invalidation (SiteDirectory.invalidate: drop the Redis copy, announce)
    makes the server reload the look: the slow config refresh, the only other way a
    new theme could show, never comes due here."""
    monkeypatch.setattr(cache_module, "CONFIG_REFRESH_S", math.inf)
    directory = SiteDirectory(redis_client, engine, settings)
    async with one_more_subscriber(redis_client, directory.channel):
        server = await start_server(settings)
    site_id = make_site()
    before = await server.fetch(f"/status/{site_id}/image.png")
    assert top_colour(before.body) == "#8a8a8a"
    announced = metrics.NOTIFICATIONS.labels("config")._value.get()
    with engine.begin() as conn:
        theme = {"colours": {"offline_image": "#123456"}, "texts": {"offline_image_text": "Back at 9"}}
        conn.execute(sa.update(sites).where(sites.c.id == site_id).values(theme=theme))
    await directory.invalidate(site_id)  # what the console does
    deadline = time.monotonic() + DEADLINE_S
    while top_colour((after := await server.fetch(f"/status/{site_id}/image.png")).body) != "#123456":
        assert time.monotonic() < deadline, "the new theme did not show"
        await asyncio.sleep(0.02)
    assert metrics.NOTIFICATIONS.labels("config")._value.get() - announced >= 1
    assert after.headers["Etag"] != before.headers["Etag"]


async def test_http_caching_headers_304_and_head(
    start_server: Start, make_site: Callable[[], str], settings: Settings, redis_client: aioredis.Redis
) -> None:
    server = await start_server(settings)
    site_id = make_site()
    image = await server.fetch(f"/status/{site_id}/image.png")
    assert image.code == 200
    assert image.headers["Content-Type"] == "image/png"
    assert image.headers["Cache-Control"] == "no-cache"
    assert int(image.headers["Content-Length"]) == len(image.body) > 100
    offline_etag = image.headers["Etag"]

    same = await server.fetch(f"/status/{site_id}/image.png", headers={"If-None-Match": offline_etag})
    assert (same.code, same.body) == (304, b"")
    assert same.headers["Etag"] == offline_etag

    head = await server.fetch(f"/status/{site_id}/image.png", method="HEAD")
    assert (head.code, head.body) == (200, b"")
    assert head.headers["Content-Length"] == image.headers["Content-Length"]
    assert head.headers["Etag"] == offline_etag
    head_json = await server.fetch(f"/status/{site_id}.json", method="HEAD")
    assert (head_json.code, head_json.body, head_json.headers["Content-Type"]) == (200, b"", "application/json")

    await OperatorPresence(redis_client, settings).set_available([site_id], "ana@localhost", "laptop", True)
    await _wait_for(server, site_id, online=True)
    changed = await server.fetch(f"/status/{site_id}/image.png", headers={"If-None-Match": offline_etag})
    assert changed.code == 200 and changed.headers["Etag"] != offline_etag  # the old ETag no longer matches

    json_answer = await server.fetch(f"/status/{site_id}.json")
    assert json_answer.headers["Cache-Control"] == "no-cache"
    assert json_answer.headers["Access-Control-Allow-Origin"] == "*"
    again = await server.fetch(f"/status/{site_id}.json", headers={"If-None-Match": json_answer.headers["Etag"]})
    assert again.code == 304


async def test_bad_site_ids_get_a_clear_404_and_never_a_broken_image(start_server: Start, settings: Settings) -> None:
    server = await start_server(settings)
    neutral = server.renderer.neutral.body
    for path, reason in (
        ("/status/12-34/image.png", "malformed site id"),
        ("/status/%3Cscript%3E%0D%0AX-Evil:%201/image.png", "malformed site id"),
        ("/status/9999-99999-99-9999/image.png", "no site 9999-99999-99-9999"),
    ):
        response = await server.fetch(path)
        assert response.code == 404, path
        assert response.headers["Content-Type"] == "image/png"
        assert response.body == neutral
        assert reason in response.headers["X-Habla-Error"]
        assert "X-Evil" not in response.headers
    malformed = await server.fetch("/status/%3Cscript%3E.json")
    assert malformed.code == 404
    assert json.loads(malformed.body) == {
        "error": "'<script>' is not a site id: expected four groups of digits like 4324-24618-10-8812"
    }
    unknown = await server.fetch("/status/9999-99999-99-9999.json")
    assert unknown.code == 404
    assert json.loads(unknown.body)["error"].startswith("no site 9999-99999-99-9999")
    assert (await server.fetch("/status/9999-99999-99-9999/image.png", method="HEAD")).code == 404


async def test_steady_state_is_served_from_memory(
    start_server: Start, make_site: Callable[[], str], settings: Settings
) -> None:
    server = await start_server(settings)
    site_id = make_site()
    hits, misses = metrics.CACHE_HITS._value.get(), metrics.CACHE_MISSES._value.get()
    assert (await server.fetch(f"/status/{site_id}/image.png")).code == 200  # loads the site once
    answers = await asyncio.gather(*(server.fetch(f"/status/{site_id}/image.png") for _ in range(40)))
    assert {a.code for a in answers} == {200}
    # One load, then 40 answers from the in-process dict: the request path has no I/O.
    assert metrics.CACHE_MISSES._value.get() - misses == 1
    assert metrics.CACHE_HITS._value.get() - hits == 40


async def test_healthz_and_metrics(start_server: Start, make_site: Callable[[], str], settings: Settings) -> None:
    server = await start_server(settings)
    await server.fetch(f"/status/{make_site()}/image.png")
    health = await server.fetch("/healthz")
    assert health.code == 200 and json.loads(health.body)["checks"] == {"redis": "ok"}
    text = (await server.fetch("/metrics")).body.decode()
    for name in (
        'habla_status_requests_total{code="200",endpoint="image"}',
        'habla_status_request_seconds_bucket{endpoint="image",le="0.001"}',
        "habla_status_cache_hits_total",
        "habla_status_cache_misses_total",
        "habla_status_redis_errors_total",
        "habla_status_redis_up",
    ):
        assert name in text, name


async def test_garbage_in_redis_counts_as_offline_and_breaks_nothing(
    start_server: Start, make_site: Callable[[], str], settings: Settings, redis_client: aioredis.Redis
) -> None:
    server = await start_server(settings)
    site_id = make_site()
    assert not await server.is_online(site_id)
    await redis_client.publish(site_status_channel(settings), "not json")  # a bad announcement
    await redis_client.set(site_status_key(settings, site_id), "{broken")  # a bad status key
    await asyncio.sleep(0.6)  # past one refresh
    assert not await server.is_online(site_id)
    # Both the listener and the refresh are still alive: a real change still shows.
    await OperatorPresence(redis_client, settings).set_available([site_id], "ana@localhost", "laptop", True)
    await _wait_for(server, site_id, online=True)


class CountingDirectory(SiteDirectory):
    """The real directory, counting lookups (to prove concurrent first requests share one)."""

    lookups = 0

    async def get(self, site_id: str) -> SiteConfig:
        self.lookups += 1
        return await super().get(site_id)


async def test_first_requests_share_one_load_and_idle_sites_leave_memory(
    make_site: Callable[[], str], settings: Settings, redis_client: aioredis.Redis, engine: sa.Engine
) -> None:
    directory = CountingDirectory(redis_client, engine, settings)
    cache = SiteStatusCache(
        redis_client, directory, SiteStatusReader(redis_client, settings), ImageRenderer(), settings
    )
    site_id = make_site()
    entries = await asyncio.gather(*(cache.load(site_id) for _ in range(20)))
    assert directory.lookups == 1 and len({id(e) for e in entries}) == 1
    assert cache.lookup(site_id) is entries[0]
    unknown = await cache.load("9999-99999-99-9999")
    assert unknown.look is None and cache.lookup("9999-99999-99-9999") is unknown

    entries[0].used_at -= IDLE_EVICT_S + 1  # not asked about for longer than the limit
    unknown.config_at -= MISSING_TTL_S + 1  # a "no such site" answer remembered long enough
    await cache.refresh()
    assert cache.lookup(site_id) is None and cache.lookup("9999-99999-99-9999") is None


async def test_mysql_down_still_answers_with_the_live_state_in_the_default_look(
    start_server: Start, make_site: Callable[[], str], settings: Settings, redis_client: aioredis.Redis
) -> None:
    """A site whose config is in neither memory nor Redis while MySQL is unreachable (a
    port nobody listens on): an image all the same, and the state still from Redis."""
    nobody = sa.create_engine(f"mysql+pymysql://root:@127.0.0.1:{free_port()}/habla?connect_timeout=1")
    try:
        server = await start_server(settings, nobody)
        site_id = make_site()  # in this run's database, which the server cannot reach
        response = await server.fetch(f"/status/{site_id}/image.png")
        assert response.code == 200 and response.headers["Etag"] == server.cache.default_look.offline.etag
        await OperatorPresence(redis_client, settings).set_available([site_id], "ana@localhost", "laptop", True)
        await _wait_for(server, site_id, online=True)
    finally:
        nobody.dispose()


async def test_stop_ends_every_task_even_mid_connect(
    settings: Settings, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() at each of the first loop passes after start(), while the listeners are
    still connecting and subscribing: every task ends. On Python 3.11 a cancellation that
    arrives just as one of the asyncio.wait_for(drain) calls in redis-py's connect
    finishes is dropped (CPython gh-86296): the listener subscribed and listened on,
    stop() gave up after STOP_TIMEOUT_S, and once the client had closed the pool the
    listener reconnected: a Redis connection nobody closed, reported as a
    ResourceWarning in whichever later test collected it."""
    monkeypatch.setattr(cache_module, "STOP_TIMEOUT_S", 2.0)
    for passes in range(30):
        client = state.connect(settings)
        directory = SiteDirectory(client, engine, settings)
        cache = SiteStatusCache(client, directory, SiteStatusReader(client, settings), ImageRenderer(), settings)
        cache.start()
        tasks = set(cache._tasks)
        try:
            for _ in range(passes):
                await asyncio.sleep(0)
            await cache.stop()
            assert [t for t in tasks if not t.done()] == [], f"stopped after {passes} loop passes"
        finally:
            for task in tasks:  # after a failure: leave nothing running for later tests
                task.cancel()
            await asyncio.wait(tasks, timeout=2.0)
            await client.aclose()
