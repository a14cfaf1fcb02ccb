"""Which operators follow which visitors' page changes (!follow / !unfollow)."""

from __future__ import annotations

import redis.asyncio as aioredis

from libs.common.settings import Settings


class Follows:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings

    def _followers_key(self, visitor_id: str) -> str:
        return self._settings.redis_key("gw", "followers", visitor_id)

    async def follow(self, operator: str, visitor_id: str) -> bool:
        """True if newly followed."""
        added = await self._redis.sadd(self._followers_key(visitor_id), operator)
        # A follow lasts as long as the visit: the session TTL.
        await self._redis.expire(self._followers_key(visitor_id), self._settings.session_ttl_s)
        return bool(added)

    async def unfollow(self, operator: str, visitor_id: str) -> bool:
        return bool(await self._redis.srem(self._followers_key(visitor_id), operator))

    async def followers(self, visitor_id: str) -> set[str]:
        return {str(op) for op in await self._redis.smembers(self._followers_key(visitor_id))}
