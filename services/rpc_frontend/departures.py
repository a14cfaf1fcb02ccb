"""Visitors who left: VisitorEvent LEFT once a visit's heartbeat has stopped.

Redis expires a session silently, so the frontend keeps its own sorted set of visits
scored by when each was last seen (page view, connection, heartbeat). A sweep, run by
one instance at a time under a short Redis lease, announces every visit not seen for
the session TTL and forgets it. Announced after the publish is confirmed, removed
after: a crash in between announces a departure twice, which consumers tolerate
(the gateway marks the visitor's buddy unavailable again).
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from libs.common import codec, topology
from libs.common.lease import Lease
from libs.common.messaging import Bus
from libs.common.settings import Settings

log = logging.getLogger(__name__)

# How often each instance tries to sweep: a departure is announced at most this late.
SWEEP_INTERVAL_S = 60
# The lease one sweeper holds; shorter than the interval so a dead holder blocks one round only.
LEASE_S = 30
# Departures handled per sweep; the rest wait a round (bounds one sweep's work).
BATCH = 500


# KEYS[1] = last-seen zset; ARGV[1] = member, ARGV[2] = cutoff. Removes the member
# only if it was not seen again meanwhile (a newer score means the visit goes on).
_FORGET_IF_UNSEEN = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


class Departures:
    def __init__(self, redis: aioredis.Redis, bus: Bus, settings: Settings) -> None:
        self._redis = redis
        self._bus = bus
        self._settings = settings
        self._key = settings.redis_key("frontend", "last-seen")
        self.key = self._key  # services.rpc_frontend.visits writes it too
        # Token-checked: a sweep that outlives its lease never releases the next holder's.
        self._lease = Lease(redis, settings.redis_key("frontend", "sweeper"), LEASE_S * 1000)
        self._forget_if_unseen = redis.register_script(_FORGET_IF_UNSEEN)

    async def seen(self, site_id: str, visitor_id: str) -> None:
        await self._redis.zadd(self._key, {f"{site_id}|{visitor_id}": time.time()})

    async def sweep(self) -> int:
        """Announce visits unseen for the session TTL; returns how many (0 if another instance sweeps)."""
        if not await self._lease.acquire():
            return 0
        try:
            cutoff = time.time() - self._settings.session_ttl_s
            due = await self._redis.zrangebyscore(self._key, "-inf", cutoff, start=0, num=BATCH)
            for member in due:
                site_id, _, visitor_id = str(member).partition("|")
                event = codec.VisitorEvent(
                    visitor_id=visitor_id,
                    site_id=site_id,
                    kind=codec.VisitorEventKind.LEFT,
                    at_ms=int(time.time() * 1000),
                )
                await self._bus.publish(topology.VISITOR, f"{site_id}.event", event)
                await self._forget(str(member), cutoff)
            return len(due)
        finally:
            await self._lease.release()

    async def _forget(self, member: str, cutoff: float) -> None:
        await self._forget_if_unseen(keys=[self._key], args=[member, cutoff])


async def sweep_forever(departures: Departures) -> None:
    """Runs until cancelled."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        try:
            count = await departures.sweep()
            if count:
                log.info("departures announced", extra={"visitors": count})
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis or RabbitMQ down: the next round catches up
            log.exception("departure sweep failed")
