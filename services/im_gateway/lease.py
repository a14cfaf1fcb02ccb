"""One active gateway per component domain: a Redis lease with a token.

The holder renews every second; a standby checks about once a second and, once the
holder has missed renewals, tries the component connection. The XMPP server is the
fence: Prosody admits one connection per component domain (a second gets <conflict/>),
so the standby gets in only once the old stream is gone, then takes the lease
(services.im_gateway.gateway). A holder still alive -- cut off from Redis and XMPP,
say -- finds another token at its next renewal and stops.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.common.lease import Lease
from libs.common.settings import Settings
from services.im_gateway import metrics
from services.im_gateway.rebalance import HANDOFF_TTL_MS, member_id

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """Another instance holds the lease now: this one must stop acting."""


# See DomainLease.renew_s and DomainLease.vacant.
RENEW_MAX_S = 1.0
STALE_RENEWALS = 2.5


class DomainLease:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._lease = Lease(
            redis,
            settings.redis_key("gw", "lease", settings.xmpp_component_domain),
            settings.gateway_lease_ttl_s * 1000,
        )
        # host:pid in the token: `GET <prefix>gw:lease:<domain>` tells an operator (and
        # the partition tests) which process owns a domain; the random part stays unique.
        # The part before the last colon is this process's member id
        # (services.im_gateway.rebalance): the planner counts each member's partitions.
        self.member = member_id()
        self._lease.token = f"{self.member}:{self._lease.token}"
        self._key = self._lease.key
        # Names the member a released domain is handed over to (rebalance, graceful stop).
        self._handoff_key = settings.redis_key("gw", "handoff", settings.xmpp_component_domain)
        self._ttl_ms = self._lease.ttl_ms
        self.token = self._lease.token
        # Renewed every second (or ttl/3 if shorter): one Redis call a second, and a
        # standby can tell a dead holder within a few seconds, long before the TTL.
        self.renew_s = min(self._ttl_ms / 3000, RENEW_MAX_S)
        self.orphaned = False  # set by vacant(): the lease is held but its holder died
        self.promised = False  # set by vacant(): handed over to this member, claim at once
        self.promised_away = False  # set by vacant(): handed over to another member

    async def vacant(self) -> bool:
        """May a standby claim the domain? Yes if nobody holds the lease, or its holder
        has missed renewals (it died: its remaining time fell STALE_RENEWALS renewal
        periods below the TTL). Not while a live holder renews it: servers that admit
        several connections per component domain (ejabberd balances between them)
        would otherwise let a standby in beside it. Not either while a released domain
        is handed over to another member (the handoff record names it; it expires)."""
        self.orphaned = self.promised = self.promised_away = False
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._key)
                pipe.pttl(self._key)
                pipe.get(self._handoff_key)
                holder, remaining_ms, handoff = await pipe.execute()
        except (RedisError, OSError):
            return False  # cannot tell: the holder may be fine
        self.promised = handoff == self.member
        self.promised_away = handoff is not None and not self.promised
        if holder is None or holder == self.token:
            return not self.promised_away
        # Held by someone who stopped renewing: a dead owner (partitions: claim at once).
        self.orphaned = bool(remaining_ms < self._ttl_ms - STALE_RENEWALS * self.renew_s * 1000)
        return self.orphaned

    async def hand_to(self, member: str) -> None:
        """Promise the domain to ``member`` before releasing it: while the record
        lives (HANDOFF_TTL_MS) nobody else claims it once it is free."""
        await self._redis.set(self._handoff_key, member, px=HANDOFF_TTL_MS)

    async def acquire(self) -> None:
        """Wait until this instance holds the lease."""
        waited = False
        while not await self._lease.acquire():
            if not waited:
                log.info("another gateway holds this component domain; standing by", extra={"key": self._key})
                waited = True
            # Poll at a third of the TTL: take over at most ~TTL/3 after expiry.
            await asyncio.sleep(self._ttl_ms / 3000)
        metrics.LEASE_HELD.set(1)
        log.info("gateway lease acquired", extra={"key": self._key})

    async def take(self) -> None:
        """Take the lease now (the caller holds the component connection: see
        libs.common.lease.Lease.take), retrying while Redis is unreachable."""
        while True:
            try:
                await self._lease.take()
                if self.promised:
                    await self._redis.delete(self._handoff_key)
                break
            except (RedisError, OSError) as exc:
                log.warning("cannot take the gateway lease (Redis unreachable); retrying: %s", exc)
                await asyncio.sleep(0.5)
        metrics.LEASE_HELD.set(1)
        log.info("gateway lease taken", extra={"key": self._key})

    async def keep(self) -> None:
        """Renew every TTL/3 until cancelled; LeaseLost only if someone else took it.

        A Redis that cannot be reached is not a lost lease: nobody else can take it
        meanwhile either, and the XMPP server still fences us (one connection per
        component domain). Riding it out keeps a Redis restart from stopping the
        gateway; once Redis is back, the renewal tells whether we still hold it."""
        unreachable = False
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                held = await self._lease.acquire()
            except (RedisError, OSError) as exc:
                if not unreachable:
                    log.warning("cannot renew the gateway lease (Redis unreachable); carrying on: %s", exc)
                unreachable = True
                continue
            if unreachable:
                log.info("Redis is back", extra={"key": self._key, "held": held})
                unreachable = False
            if not held:
                metrics.LEASE_HELD.set(0)
                raise LeaseLost(f"lease {self._key} was taken by another gateway")

    async def release(self) -> None:
        await self._lease.release()
        metrics.LEASE_HELD.set(0)

    async def held(self) -> None:
        """Health check."""
        if await self._redis.get(self._key) != self.token:
            raise LeaseLost("this instance does not hold the gateway lease")
