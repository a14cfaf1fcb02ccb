"""Which operators follow which visitors' page changes (!follow / !unfollow)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from libs.common.settings import Settings


class Follows:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings

    def _followers_key(self, visitor_id: str) -> str:
        return self._settings.redis_key("gw", "followers", visitor_id)

    def _following_key(self, operator: str, site_id: str) -> str:
        # The other way round, per site: whom an operator's roster must keep (services.im_gateway.rosters).
        return self._settings.redis_key("gw", "following", site_id, operator)

    async def follow(self, operator: str, visitor_id: str, site_id: str = "") -> bool:
        """True if newly followed."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self._followers_key(visitor_id), operator)
            # A follow lasts as long as the visit: the session TTL.
            pipe.expire(self._followers_key(visitor_id), self._settings.session_ttl_s)
            if site_id:
                pipe.sadd(self._following_key(operator, site_id), visitor_id)
                pipe.expire(self._following_key(operator, site_id), self._settings.session_ttl_s)
            added, *_ = await pipe.execute()
        return bool(added)

    async def unfollow(self, operator: str, visitor_id: str, site_id: str = "") -> bool:
        if site_id:
            await self._redis.srem(self._following_key(operator, site_id), visitor_id)
        return bool(await self._redis.srem(self._followers_key(visitor_id), operator))

    async def following(self, operator: str, site_id: str) -> set[str]:
        """Visitors of ``site_id`` the operator follows (ended visits drop out with the roster refresh)."""
        return {str(v) for v in await self._redis.smembers(self._following_key(operator, site_id))}

    async def followers(self, visitor_id: str) -> set[str]:
        return {str(op) for op in await self._redis.smembers(self._followers_key(visitor_id))}

    def followers_key(self, visitor_id: str) -> str:
        """The visitor's followers' set (for a script that reads it with other keys)."""
        return self._followers_key(visitor_id)

    def queue_followers(self, pipe: Any, visitor_id: str) -> None:
        """``followers`` as a command on ``pipe`` (its answer: the set)."""
        pipe.smembers(self._followers_key(visitor_id))

    def queue_following(self, pipe: Any, operator: str, site_id: str) -> None:
        """``following`` as a command on ``pipe`` (its answer: the set)."""
        pipe.smembers(self._following_key(operator, site_id))
