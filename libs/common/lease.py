"""A Redis lease: at most one holder at a time across every process of a service.

``SET key token NX PX ttl`` takes it; the holder renews it well before it expires and
only the holder (same token) may renew or release it, checked atomically in Lua. A
holder that dies simply stops renewing and the lease passes on after ``ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

# Polling interval while waiting for a lease someone else holds: short next to the
# few-second leases used here, long enough not to load Redis.
POLL_S = 0.05


class LeaseBusy(Exception):
    """Someone else holds the lease (and kept it for as long as we were willing to wait)."""


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

    async def take(self) -> None:
        """Hold the lease whoever holds it now. Only for a caller fenced by something
        stronger (the gateway: the XMPP server lets one connection per component
        domain in), so a holder that died need not be waited out; one still alive
        finds another token at its next renewal and stops."""
        await self._redis.set(self.key, self.token, px=self.ttl_ms)

    @contextlib.asynccontextmanager
    async def held(self, wait_s: float = 0.0) -> AsyncIterator[None]:
        """Hold the lease for the block, renewing it every third of its ttl, so the
        ttl only bounds how long a holder that *died* blocks the others.
        Waits up to ``wait_s`` for a current holder; LeaseBusy after that."""
        deadline = time.monotonic() + wait_s
        while not await self.acquire():
            if time.monotonic() >= deadline:
                raise LeaseBusy(f"{self.key} is held by another worker")
            await asyncio.sleep(POLL_S)
        # Stopped by an event, not by cancelling: a cancellation landing inside a Redis
        # call can be swallowed by the client, and the renewer would then run forever.
        done = asyncio.Event()
        renewer = asyncio.create_task(self._keep(done))
        try:
            yield
        finally:
            done.set()
            await renewer
            await self.release()

    async def _keep(self, done: asyncio.Event) -> None:
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), self.ttl_ms / 3000)
            except TimeoutError:
                try:
                    await self.acquire()
                except Exception:  # Redis hiccup: the next renewal may still make it
                    log.warning("lease renewal failed", extra={"key": self.key})


class LeaseSet:
    """Leases on many keys under one token, taken, renewed and released in one Redis
    round trip each (a pipeline of the same scripts as ``Lease``): for a batch of work
    items that must each have one holder at a time. ``held`` yields the keys this
    holder got; the others are held by someone else."""

    def __init__(self, redis: aioredis.Redis, keys: list[str], ttl_ms: int) -> None:
        self._redis = redis
        self.keys = list(dict.fromkeys(keys))
        self.ttl_ms = ttl_ms
        self.token = secrets.token_hex(8)
        self._acquire = redis.register_script(_ACQUIRE_OR_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        if not keys:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                await script(keys=[key], args=args, client=pipe)
            return list(await pipe.execute())

    async def acquire(self, keys: list[str] | None = None) -> set[str]:
        """Take (or renew) the leases on ``keys`` (default: all); returns those held."""
        keys = self.keys if keys is None else keys
        results = await self._run(self._acquire, keys, [self.token, self.ttl_ms])
        return {key for key, ok in zip(keys, results, strict=True) if ok}

    async def release(self, keys: list[str]) -> None:
        await self._run(self._release, keys, [self.token])

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[set[str]]:
        """Hold what can be taken now, renewed every third of the ttl, released after."""
        held = await self.acquire()
        done = asyncio.Event()
        renewer = asyncio.create_task(self._keep(sorted(held), done))
        try:
            yield held
        finally:
            done.set()
            await renewer
            await self.release(sorted(held))

    async def _keep(self, keys: list[str], done: asyncio.Event) -> None:
        while keys and not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), self.ttl_ms / 3000)
            except TimeoutError:
                try:
                    await self.acquire(keys)
                except Exception:  # Redis hiccup: the next renewal may still make it
                    log.warning("lease renewal failed", extra={"keys": len(keys)})
