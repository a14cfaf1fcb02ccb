"""A wave of session refreshes from open sockets (thousands of widgets opened together,
their 5-minute refreshes falling due together) must not exhaust the frontend's Redis
pool: bench_idle_ws saw pings answered 503 "No connection available" at 10,000 sockets.
Here a modest number of sockets on a frontend whose pool is tiny and impatient all come
due and ping at once: every ping is answered "pong" and every session is refreshed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import tornado.websocket

from libs.common.settings import Settings
from libs.common.state.shared import SharedConnection
from services.rpc_frontend.handlers import receive
from tests.rpc_frontend.conftest import Api, StartFrontend

SOCKETS = 200
# The pub/sub follower holds one connection for good; a few are left for requests, and
# a request that waits more than CONNECTION_WAIT_S for one fails (503), as the real pool
# does after 5 s under a wave a hundred times larger.
POOL = 5
CONNECTION_WAIT_S = 0.02


@pytest.fixture
async def small_pool(settings: Settings) -> AsyncIterator[SharedConnection]:
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, decode_responses=True, max_connections=POOL, timeout=CONNECTION_WAIT_S
    )
    client = SharedConnection.from_pool(pool)  # as state.connect builds it
    yield client
    await client.aclose()


async def test_a_wave_of_refreshes_is_answered_pong_and_refreshes_every_session(
    small_pool: SharedConnection,  # first: closed after the frontends stop
    start_frontend: StartFrontend,
    site_id: str,
    settings: Settings,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(receive, "SESSION_REFRESH_S", 0)  # due at the first ping
    fe = await start_frontend(redis=small_pool)
    boots = Api((await start_frontend("boots")).url, site_id)  # sessions made on the usual pool
    visitors = []
    for start in range(0, SOCKETS, 10):
        visitors += await asyncio.gather(*(boots.session() for _ in range(start, min(SOCKETS, start + 10))))
    sockets: list[tornado.websocket.WebSocketClientConnection] = []
    try:
        await _wave(fe.url, site_id, settings, redis_client, visitors, sockets)
    finally:
        for conn in sockets:
            conn.close()


async def _wave(
    url: str,
    site_id: str,
    settings: Settings,
    redis_client: aioredis.Redis,
    visitors: list[dict[str, str]],
    sockets: list[tornado.websocket.WebSocketClientConnection],
) -> None:
    for visitor in visitors:
        ws_url = f"{url.replace('http', 'ws')}/api/sites/{site_id}/ws?token={visitor['token']}"
        conn = await tornado.websocket.websocket_connect(ws_url)
        while json.loads(await conn.read_message() or "{}").get("type") != "synced":
            pass
        sockets.append(conn)
    keys = [settings.redis_key("visitor", v["visitor_id"]) for v in visitors]
    before_ms = int(time.time() * 1000)
    await asyncio.sleep(0.01)

    async def ping(conn: tornado.websocket.WebSocketClientConnection) -> dict[str, object]:
        await conn.write_message(json.dumps({"type": "ping"}))
        raw = await asyncio.wait_for(_read(conn), 20)
        answer: dict[str, object] = json.loads(raw or "{}")
        return answer

    answers = await asyncio.gather(*(ping(conn) for conn in sockets))
    refused = [a for a in answers if a.get("type") != "pong"]
    assert not refused, f"{len(refused)} of {SOCKETS} pings not answered pong, e.g. {refused[0]}"

    async def last_seen() -> list[int]:
        async with redis_client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "last_seen")
            return [int(v or 0) for v in await pipe.execute()]

    deadline = time.monotonic() + 20
    while min(await last_seen()) < before_ms:
        assert time.monotonic() < deadline, f"{sum(s < before_ms for s in await last_seen())} sessions not refreshed"
        await asyncio.sleep(0.05)
    ttls = await asyncio.gather(*(redis_client.ttl(key) for key in keys))
    assert min(ttls) > settings.session_ttl_s - 30


async def _read(conn: tornado.websocket.WebSocketClientConnection) -> str | bytes | None:
    return await conn.read_message()
