"""The one rate limiter of every Habla service: counters in Redis, atomic across instances.

Two shapes, both a single Lua script (so concurrent requests can never all read "0"
and all pass, as a read-then-increment did):

* ``hit``: a fixed-window counter (INCR, EXPIRE on the first hit). Counted *before*
  the work it guards, so a burst is refused at once; ``refund`` gives a hit back when
  the work turned out to be harmless (a successful log-in).
* ``backoff``: growing delays per key. The first ``free`` attempts pass; after that
  each attempt must wait 1, 2, 4 … seconds (capped) after the previous one. Used for
  log-ins per (address, IP) pair: it slows a guesser to a crawl without ever locking
  the owner out from their own network.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from libs.common.settings import Settings

# The fixed-window hit itself, as a Lua function that scripts guarding other work in
# the same round trip (the frontend's page views and lines) put before their own code:
# limit_hit(counter key, window seconds, limit) is 0 when the hit is allowed, else the
# seconds until the window ends (at least 1).
HIT_FUNCTION = """
local function limit_hit(key, window, limit)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, window) end
  if n > limit then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then
      redis.call('EXPIRE', key, window)  -- a counter that lost its TTL must not block forever
      ttl = window
    end
    return ttl
  end
  return 0
end
"""

# KEYS[1] = counter; ARGV[1] = window seconds, ARGV[2] = limit.
_HIT = HIT_FUNCTION + "return limit_hit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))\n"

# KEYS[1] = counter to hit, as _HIT; KEYS[2] = a counter only looked at; ARGV[1], ARGV[2]
# as _HIT, ARGV[3] = the looked-at counter's limit. One round trip for "count this
# request, unless it is over its limit or the other counter is at its own". Returns
# {0, 0} when allowed, {1, seconds} over the hit's limit, {2, seconds} other at its limit.
_HIT_UNLESS = (
    HIT_FUNCTION
    + """
local ttl = limit_hit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if ttl > 0 then return {1, ttl} end
local other = tonumber(redis.call('GET', KEYS[2]) or '0')
if other >= tonumber(ARGV[3]) then
  return {2, math.max(redis.call('TTL', KEYS[2]), 1)}
end
return {0, 0}
"""
)

# KEYS[1] = counter. Gives one hit back, never below zero, keeping the window's TTL.
_REFUND = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return 0
"""

# KEYS[1] = hash {n = attempts, next = earliest next attempt in ms}; ARGV[1] = free
# attempts, ARGV[2] = first delay ms, ARGV[3] = longest delay ms, ARGV[4] = seconds of
# quiet after which the key is forgotten. Redis's own clock, so instances agree.
# Returns 0 when the attempt may go ahead (and counts it), else ms to wait.
_BACKOFF = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local next_ok = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
if now < next_ok then return next_ok - now end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local free = tonumber(ARGV[1])
if n > free then
  local delay = math.min(tonumber(ARGV[2]) * 2 ^ math.min(n - free - 1, 40), tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'next', now + delay)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 0
"""


class RateLimited(Exception):
    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(f"too many {what}: wait {retry_after_s} s and try again")
        self.what = what
        self.retry_after_s = retry_after_s


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._hit = redis.register_script(_HIT)
        self._refund = redis.register_script(_REFUND)
        self._hit_unless = redis.register_script(_HIT_UNLESS)
        self._backoff = redis.register_script(_BACKOFF)

    def _key(self, bucket: str, key: str) -> str:
        return self._settings.redis_key("rl", bucket, key)

    async def hit(self, bucket: str, key: str, limit: int, what: str, window_s: int = 60) -> None:
        """Count one hit on ``key``; RateLimited if it is over ``limit`` in this window."""
        retry_after = int(await self._hit(keys=[self._key(bucket, key)], args=[window_s, limit]))
        if retry_after > 0:
            raise RateLimited(what, retry_after)

    async def hit_unless(
        self, bucket: str, key: str, limit: int, what: str, *, other: tuple[str, str, int], other_what: str
    ) -> None:
        """``hit``, and ``over`` on ``other`` = (bucket, key, limit), in one round trip:
        RateLimited(what) if this hit is over ``limit``, else RateLimited(other_what) if
        the other counter is at its limit (then this hit still counts, as with hit + over)."""
        window_s = 60
        other_bucket, other_key, other_limit = other
        refused, wait = await self._hit_unless(
            keys=[self._key(bucket, key), self._key(other_bucket, other_key)], args=[window_s, limit, other_limit]
        )
        if int(refused) == 1:
            raise RateLimited(what, int(wait))
        if int(refused) == 2:
            raise RateLimited(other_what, int(wait))

    async def over(self, bucket: str, key: str, limit: int) -> int:
        """Seconds until ``key`` may be hit again if it is at its limit now, else 0 (counts nothing)."""
        raw = await self._redis.get(self._key(bucket, key))
        if raw is None or int(raw) < limit:
            return 0
        return max(int(await self._redis.ttl(self._key(bucket, key))), 1)

    async def refund(self, bucket: str, key: str) -> None:
        await self._refund(keys=[self._key(bucket, key)])

    async def backoff(
        self, bucket: str, key: str, what: str, *, free: int, first_delay_s: float, max_delay_s: float, forget_s: int
    ) -> None:
        """Count one attempt; RateLimited (with the wait) if it comes before the key's next slot."""
        wait_ms = int(
            await self._backoff(
                keys=[self._key(bucket, key)],
                args=[free, int(first_delay_s * 1000), int(max_delay_s * 1000), forget_s],
            )
        )
        if wait_ms > 0:
            raise RateLimited(what, -(-wait_ms // 1000))

    async def reset(self, bucket: str, key: str) -> None:
        await self._redis.delete(self._key(bucket, key))
