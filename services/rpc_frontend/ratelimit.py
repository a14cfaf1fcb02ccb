"""Fixed-window rate limits kept in Redis, so they hold across frontend instances."""

from __future__ import annotations

import redis.asyncio as aioredis

from libs.common.settings import Settings

# KEYS[1] = counter; ARGV[1] = window seconds, ARGV[2] = limit. Returns -1 when the
# hit is allowed, else the seconds until the window ends (at least 1).
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
if n > tonumber(ARGV[2]) then
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < 1 then ttl = 1 end
  return ttl
end
return -1
"""

WINDOW_S = 60  # limits are configured "per minute"
# Typing and identity events a visitor may send per line allowed: a start and a stop
# per line, plus slack for someone who types, deletes and types again.
EVENTS_PER_LINE = 4


class RateLimited(Exception):
    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(f"too many {what}: wait {retry_after_s} s and try again")
        self.retry_after_s = retry_after_s


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._settings = settings
        self._hit = redis.register_script(_HIT)

    async def check(self, bucket: str, key: str, per_minute: int, what: str) -> None:
        """Count one hit; RateLimited if ``key`` exceeded ``per_minute`` in this window."""
        retry_after = int(
            await self._hit(keys=[self._settings.redis_key("rl", bucket, key)], args=[WINDOW_S, per_minute])
        )
        if retry_after >= 0:
            raise RateLimited(what, retry_after)

    async def check_events(self, visitor_id: str) -> None:
        """Typing/identity events: a multiple of the visitor's line limit."""
        await self.check("evt", visitor_id, self._settings.visitor_messages_per_min * EVENTS_PER_LINE, "events")
