"""Visitor sessions: a Redis hash per visitor with a sliding TTL.

A session may be lost if Redis dies (the visitor simply starts a new one); the
conversation never is. Visitors on a site are also kept in a sorted set scored by
last-seen time, which is what `!who` and the site bot's status line read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import redis.asyncio as aioredis

from libs.common.settings import Settings

# A token is 16 hex chars, a dot and 32 hex chars; longer is not one of ours.
MAX_TOKEN_CHARS = 100


class VisitorSessions:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings

    def _key(self, visitor_id: str) -> str:
        return self._settings.redis_key("visitor", visitor_id)

    def key(self, visitor_id: str) -> str:
        """The session's Redis key (for scripts that read it with other keys)."""
        return self._key(visitor_id)

    def _site_key(self, site_id: str) -> str:
        return self._settings.redis_key("site", site_id, "visitors")

    # --- tokens: "<visitor_id>.<hmac>", so any frontend instance verifies one offline --
    def token_for(self, visitor_id: str) -> str:
        mac = hmac.new(self._settings.secret_key.encode(), visitor_id.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{visitor_id}.{mac}"

    def visitor_of(self, token: str) -> str | None:
        """The visitor id a token was issued for, or None if it is forged or malformed."""
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            return None  # not one of ours (and compare_digest refuses non-ASCII text)
        visitor_id, _, _mac = token.rpartition(".")
        if not visitor_id or not hmac.compare_digest(self.token_for(visitor_id), token):
            return None
        return visitor_id

    @staticmethod
    def new_visitor_id() -> str:
        # 16 hex chars: unguessable enough for an id that also names an XMPP JID.
        return secrets.token_hex(8)

    async def save(self, visitor_id: str, site_id: str, fields: Mapping[str, str | int]) -> None:
        """Create or update the session and refresh its TTL and the site's visitor set."""
        now = time.time()
        key = self._key(visitor_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            # redis-py types mapping keys as bytes|str|…; ours are str.
            values: dict[Any, Any] = {"site_id": site_id, "last_seen": int(now * 1000), **fields}
            pipe.hset(key, mapping=values)
            pipe.hsetnx(key, "started_at", int(now * 1000))
            pipe.expire(key, self._settings.session_ttl_s)
            pipe.zadd(self._site_key(site_id), {visitor_id: now})
            pipe.zremrangebyscore(self._site_key(site_id), "-inf", now - self._settings.session_ttl_s)
            pipe.expire(self._site_key(site_id), self._settings.session_ttl_s)
            await pipe.execute()

    async def get(self, visitor_id: str) -> dict[str, str] | None:
        data = cast(dict[str, str], await self._redis.hgetall(self._key(visitor_id)))
        return data or None

    async def on_site(self, site_id: str, limit: int | None = None) -> list[str]:
        """Visitors seen on the site within the session TTL, most recent first (at most ``limit``)."""
        cutoff = time.time() - self._settings.session_ttl_s
        key = self._site_key(site_id)
        if limit is None:
            found = await self._redis.zrevrangebyscore(key, "+inf", cutoff)
        else:
            found = await self._redis.zrevrangebyscore(key, "+inf", cutoff, start=0, num=limit)
        return [str(v) for v in found]

    async def left(self, site_id: str, visitor_id: str) -> None:
        """The visit is over (VisitorEvent LEFT): no longer among the site's visitors."""
        await self._redis.zrem(self._site_key(site_id), visitor_id)

    async def count_on_site(self, site_id: str) -> int:
        """How many visitors ``on_site`` lists, counted by Redis (ZCOUNT): the list itself
        is not sent back (thousands of ids for a busy site, every site bot refresh)."""
        cutoff = time.time() - self._settings.session_ttl_s
        return int(await self._redis.zcount(self._site_key(site_id), cutoff, "+inf"))

    async def still_on_site(self, site_id: str, visitor_ids: Iterable[str]) -> set[str]:
        """Those of ``visitor_ids`` that ``is_on_site``, in one round trip (ZMSCORE)."""
        wanted = list(dict.fromkeys(visitor_ids))
        if not wanted:
            return set()
        cutoff = time.time() - self._settings.session_ttl_s
        scores = await self._redis.zmscore(self._site_key(site_id), wanted)
        return {v for v, score in zip(wanted, scores, strict=True) if score is not None and float(score) >= cutoff}

    async def is_on_site(self, site_id: str, visitor_id: str) -> bool:
        score = await self._redis.zscore(self._site_key(site_id), visitor_id)
        return score is not None and float(score) >= time.time() - self._settings.session_ttl_s

    async def forget(self, visitor_id: str) -> None:
        session = await self.get(visitor_id)
        await self._redis.delete(self._key(visitor_id))
        if session and "site_id" in session:
            await self._redis.zrem(self._site_key(session["site_id"]), visitor_id)
