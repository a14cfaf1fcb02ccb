"""A Redis lease: at most one holder at a time across every worker process.

``SET key token NX PX ttl`` takes it; the holder renews it well before it expires and
only the holder (same token) may renew or release it, checked atomically in Lua. A
holder that dies simply stops renewing and the lease passes on after ``ttl``.
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

# KEYS[1] = lease key; ARGV[1] = token, ARGV[2] = ttl ms. Renew if ours, else take if free.
_ACQUIRE_OR_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] = lease key; ARGV[1] = token. Delete only if still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    def __init__(self, redis: aioredis.Redis, key: str, ttl_ms: int) -> None:
        self._redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = secrets.token_hex(8)
        self._acquire = redis.register_script(_ACQUIRE_OR_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        """Take the lease, or renew it if we hold it. False: someone else holds it."""
        return bool(await self._acquire(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.token])
