"""Shared state in Redis: sessions, conversation logs, operator presence, site status.

What Redis holds may be lost if Redis dies *except* conversation lines, which the
archive consumer also writes to MySQL; a frontend rebuilds a lost log from there only
through the transcript, so run Redis with persistence in production.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from libs.common.settings import Settings


def connect(settings: Settings) -> aioredis.Redis:
    """A pooled client; decode_responses so every value is str."""
    return aioredis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
