"""The shared limiter against the real Redis: atomic under concurrency, growing delays."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from libs.common.ratelimit import RateLimited, RateLimiter
from libs.common.settings import Settings


async def test_fixed_window_is_atomic_under_a_burst(settings: Settings, redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client, settings)
    key = uuid.uuid4().hex
    results = await asyncio.gather(*(limiter.hit("test", key, 10, "tries") for _ in range(100)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(refused) == 90 and all(1 <= r.retry_after_s <= 60 for r in refused)
    assert await limiter.over("test", key, 10) >= 1
    await limiter.reset("test", key)
    assert await limiter.over("test", key, 10) == 0


async def test_refund_gives_a_hit_back(settings: Settings, redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client, settings)
    key = uuid.uuid4().hex
    for _ in range(5):
        await limiter.hit("test", key, 2, "tries")
        await limiter.refund("test", key)
    await limiter.refund("test", key)  # never below zero
    await limiter.hit("test", key, 2, "tries")
    await limiter.hit("test", key, 2, "tries")
    with pytest.raises(RateLimited):
        await limiter.hit("test", key, 2, "tries")


async def test_backoff_lets_free_attempts_through_then_spaces_them(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    limiter = RateLimiter(redis_client, settings)
    key = uuid.uuid4().hex
    delays = {"free": 3, "first_delay_s": 0.2, "max_delay_s": 0.4, "forget_s": 60}
    results = await asyncio.gather(
        *(limiter.backoff("test", key, "tries", **delays) for _ in range(20)),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 4  # 3 free, the 4th checked and starts a delay
    assert all(isinstance(r, RateLimited) and r.retry_after_s >= 1 for r in results if r is not None)
    for _ in range(3):  # after each wait exactly one more attempt passes (the delay is capped)
        await asyncio.sleep(0.45)
        await limiter.backoff("test", key, "tries", **delays)  # type: ignore[arg-type]
        with pytest.raises(RateLimited):
            await limiter.backoff("test", key, "tries", **delays)  # type: ignore[arg-type]
