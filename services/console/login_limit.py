"""Failed log-ins counted in Redis, per address and per client IP, in a fixed window.

Counting per address stops password guessing against one owner from many IPs;
counting per IP stops one client trying many addresses. A success clears the
address's count. Several console instances share the counts through Redis.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from libs.common.settings import Settings

# OWASP Authentication Cheat Sheet: lock after a handful of failures for minutes,
# not forever (a permanent lock lets anyone lock an owner out). 5 tries / 15 min.
MAX_FAILURES_PER_EMAIL = 5
# An office behind one NAT may hold several owners who mistype: 4x the per-address limit.
MAX_FAILURES_PER_IP = 20
WINDOW_S = 15 * 60


class LoginLimiter:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings

    def _keys(self, email: str, ip: str) -> list[tuple[str, int]]:
        return [
            (self._settings.redis_key("console", "login-failures", "email", email), MAX_FAILURES_PER_EMAIL),
            (self._settings.redis_key("console", "login-failures", "ip", ip), MAX_FAILURES_PER_IP),
        ]

    async def retry_after(self, email: str, ip: str) -> int:
        """Seconds until this address/IP may try again; 0 when it may try now."""
        wait = 0
        for key, limit in self._keys(email, ip):
            count = await self._redis.get(key)
            if count is not None and int(count) >= limit:
                wait = max(wait, int(await self._redis.ttl(key)), 1)
        return wait

    async def failed(self, email: str, ip: str) -> None:
        for key, _ in self._keys(email, ip):
            async with self._redis.pipeline(transaction=True) as pipe:
                # NX: the window starts at the first failure and is not extended by later ones.
                pipe.incr(key)
                pipe.expire(key, WINDOW_S, nx=True)
                await pipe.execute()

    async def succeeded(self, email: str) -> None:
        await self._redis.delete(self._keys(email, "")[0][0])


# Accounts created per IP address per hour: a person makes one, an office a few; a
# script making hundreds of accounts (and sites) is stopped after 10.
MAX_SIGNUPS_PER_IP = 10
SIGNUP_WINDOW_S = 3600


class SignUpLimiter:
    """Successful sign-ups counted per client IP in a fixed one-hour window."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, max_per_ip: int = MAX_SIGNUPS_PER_IP) -> None:
        self._redis = redis
        self._settings = settings
        self.max_per_ip = max_per_ip

    def _key(self, ip: str) -> str:
        return self._settings.redis_key("console", "signups", "ip", ip)

    async def retry_after(self, ip: str) -> int:
        count = await self._redis.get(self._key(ip))
        if count is not None and int(count) >= self.max_per_ip:
            return max(int(await self._redis.ttl(self._key(ip))), 1)
        return 0

    async def signed_up(self, ip: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(self._key(ip))
            pipe.expire(self._key(ip), SIGNUP_WINDOW_S, nx=True)
            await pipe.execute()
