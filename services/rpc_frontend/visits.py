"""A page view's Redis work in one round trip: the session, the site's visitor set,
the departures index and, for a returning visitor, the page-view limit; for a page
view whose site the frontend knows from memory, the per-IP request limit too.

A widget boot used to await five Redis round trips one after another for this (read
the session, write it in a MULTI, ZADD the departures index, read the session back,
and the page-view counter); one Lua script does the same writes, atomically, and
answers with the session as it now is. The keys are those of ``VisitorSessions`` (the
session hash and the site's visitor set), ``Departures`` (last seen) and
``RateLimiter`` (the counters); the script names them all in KEYS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from libs.common.ratelimit import HIT_FUNCTION, RateLimited
from libs.common.settings import Settings

# The session fields a page view's answer needs (VisitorChat.start's callers): only
# these come back, not the whole hash (its parsing was a tenth of a boot's CPU).
ANSWERED = ("site_id", "conversation_id", "name", "email", "phone", "frontend_id")

# KEYS[1] = session hash, KEYS[2] = the site's visitor set, KEYS[3] = departures'
# last-seen set, KEYS[4] = page-view counter, KEYS[5] = the IP's request counter,
# KEYS[6] = the IP's unknown-site counter; ARGV[1] = site id, ARGV[2] = now (ms),
# ARGV[3] = now (s, the sets' score), ARGV[4] = session TTL (s), ARGV[5] = visitor id,
# ARGV[6] = departures member, ARGV[7] = pages to add (0 or 1), ARGV[8] = page-view
# limit per minute (-1: not counted), ARGV[9] = the IP's requests per minute (-1: not
# counted here), ARGV[10] = the IP's unknown sites per minute, then field, value, … for
# the session. The IP's counters are RateLimiter.hit_unless's (admit_ip): the hit counts,
# then {3, seconds} over it, {4, seconds} the unknown-site counter at its limit.
# Returns {1, seconds}: over the page-view limit (nothing written); {2}: the session
# belongs to another site (nothing written); {0, existed (0/1), the ANSWERED fields}.
_VISIT = (
    HIT_FUNCTION
    + "local ANSWERED = {"
    + ", ".join(f"'{name}'" for name in ANSWERED)
    + """}
if tonumber(ARGV[9]) >= 0 then
  local ttl = limit_hit(KEYS[5], 60, tonumber(ARGV[9]))
  if ttl > 0 then return {3, ttl} end
  if tonumber(redis.call('GET', KEYS[6]) or '0') >= tonumber(ARGV[10]) then
    return {4, math.max(redis.call('TTL', KEYS[6]), 1)}
  end
end
if tonumber(ARGV[8]) >= 0 then
  local ttl = limit_hit(KEYS[4], 60, tonumber(ARGV[8]))
  if ttl > 0 then return {1, ttl} end
end
local existed = redis.call('EXISTS', KEYS[1])
if existed == 1 and redis.call('HGET', KEYS[1], 'site_id') ~= ARGV[1] then
  return {2}
end
redis.call('HSET', KEYS[1], 'site_id', ARGV[1], 'last_seen', ARGV[2], unpack(ARGV, 11))
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'pages', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
return {0, existed, redis.call('HMGET', KEYS[1], unpack(ANSWERED))}
"""
)


log = logging.getLogger(__name__)

# Refreshes sent in one pipeline at most (a few hundred bytes each).
REFRESH_BATCH = 500


# RateLimiter buckets of the per-IP limits and the RateLimited.what of their refusals,
# shared with admit_ip (handlers.base), which counts the same keys outside this script.
IP_BUCKET = "ip"
IP_UNKNOWN_SITE_BUCKET = "ip-unknown-site"
IP_REQUESTS = "requests"
IP_UNKNOWN_SITES = "unknown sites"


class OtherSite(LookupError):
    """The visitor's session belongs to another site: start a new visitor here."""


@dataclass(frozen=True)
class IpLimit:
    """The request's per-IP limits, counted in the visit's own round trip."""

    ip: str
    requests_per_min: int
    unknown_sites_per_min: int


@dataclass(frozen=True)
class Visit:
    existed: bool  # False: a new session (VisitorEvent ARRIVED)
    session: dict[str, str]  # the ANSWERED fields it has


class Visits:
    def __init__(self, redis: aioredis.Redis, settings: Settings, departures_key: str) -> None:
        self._settings = settings
        self._departures_key = departures_key
        self._visit = redis.register_script(_VISIT)

    def _keys_args(
        self,
        visitor_id: str,
        site_id: str,
        fields: Mapping[str, str],
        page: bool,
        pageview_limit: int | None,
        ip_limit: IpLimit | None = None,
    ) -> tuple[list[str], list[str | int | float]]:
        now = time.time()
        ip = ip_limit.ip if ip_limit is not None else "-"
        keys = [
            self._settings.redis_key("visitor", visitor_id),  # VisitorSessions' key
            self._settings.redis_key("site", site_id, "visitors"),  # … and its site set
            self._departures_key,
            self._settings.redis_key("rl", "pv", visitor_id),  # RateLimiter's "pv" bucket
            self._settings.redis_key("rl", IP_BUCKET, ip),  # … and its per-IP ones
            self._settings.redis_key("rl", IP_UNKNOWN_SITE_BUCKET, ip),
        ]
        args: list[str | int | float] = [
            site_id,
            int(now * 1000),
            repr(now),
            self._settings.session_ttl_s,
            visitor_id,
            f"{site_id}|{visitor_id}",
            1 if page else 0,
            -1 if pageview_limit is None else pageview_limit,
            -1 if ip_limit is None else ip_limit.requests_per_min,
            -1 if ip_limit is None else ip_limit.unknown_sites_per_min,
        ]
        for name, value in fields.items():
            args += [name, value]
        return keys, args

    async def record_many(
        self, redis: aioredis.Redis, visits: list[tuple[str, str]], fields: Mapping[str, str]
    ) -> list[bool]:
        """``record(visitor, site, fields, page=False)`` for each (visitor, site) of
        ``visits``, in one pipeline: one pooled connection and one round trip for all.
        True for each session refreshed (False: it belongs to another site now)."""
        async with redis.pipeline(transaction=False) as pipe:
            for visitor_id, site_id in visits:
                keys, args = self._keys_args(visitor_id, site_id, fields, False, None)
                await self._visit(keys=keys, args=args, client=pipe)
            answers = await pipe.execute()
        return [int(answer[0]) == 0 for answer in answers]

    async def record(
        self,
        visitor_id: str,
        site_id: str,
        fields: Mapping[str, str],
        *,
        page: bool,
        pageview_limit: int | None = None,
        ip_limit: IpLimit | None = None,
    ) -> Visit:
        """Create or refresh the session with ``fields`` (``pages`` + 1 if ``page``).

        ``ip_limit``: count the request against its IP's limits first, as admit_ip does
        (RateLimited IP_REQUESTS or IP_UNKNOWN_SITES, nothing else written, when refused).
        ``pageview_limit``: count a page view against the visitor's per-minute limit
        (RateLimited, nothing written, when over it). OtherSite if the visitor id has a
        session on another site."""
        keys, args = self._keys_args(visitor_id, site_id, fields, page, pageview_limit, ip_limit)
        answer = await self._visit(keys=keys, args=args)
        status = int(answer[0])
        if status == 1:
            raise RateLimited("page views", int(answer[1]))
        if status == 2:
            raise OtherSite(visitor_id)
        if status in (3, 4):
            raise RateLimited(IP_REQUESTS if status == 3 else IP_UNKNOWN_SITES, int(answer[1]))
        values = answer[2]
        return Visit(bool(int(answer[1])), {k: str(v) for k, v in zip(ANSWERED, values, strict=True) if v is not None})


class VisitRefresher:
    """The session refreshes of open sockets (their widgets' pings), batched.

    Each socket refreshes its visit every 5-10 minutes. Sockets opened together (a
    frontend restart's reconnects, a bench's ramp) came due together, and each refresh
    took a pooled Redis connection at once: thousands within a ping interval exhausted
    the pool and pings were answered 503. Here the refreshes asked for while one batch
    is in flight wait for the next, and a batch is one pipeline: one connection and one
    round trip for up to REFRESH_BATCH of them, whatever the wave."""

    def __init__(self, redis: aioredis.Redis, visits: Visits, frontend_id: str) -> None:
        self._redis = redis
        self._visits = visits
        self._fields = {"frontend_id": frontend_id}
        self._queued: dict[str, tuple[str, list[Callable[[bool], None]]]] = {}
        self._flushing: asyncio.Task[None] | None = None
        self.batches = 0  # pipelines sent

    def refresh(self, visitor_id: str, site_id: str, done: Callable[[bool], None]) -> None:
        """Refresh the visit soon; ``done(True)`` once it is, ``done(False)`` if Redis
        failed (the socket asks again at its next ping)."""
        self._queued.setdefault(visitor_id, (site_id, []))[1].append(done)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._queued:
            batch = list(self._queued.items())[:REFRESH_BATCH]
            for visitor_id, _ in batch:
                del self._queued[visitor_id]
            visits = [(visitor_id, site_id) for visitor_id, (site_id, _) in batch]
            try:
                results = await self._visits.record_many(self._redis, visits, self._fields)
            except Exception as exc:  # Redis away: each socket asks again at its next ping
                log.warning("session refreshes failed: %s", exc, extra={"sessions": len(batch)})
                results = [False] * len(batch)
            self.batches += 1
            for (_, (_, callbacks)), ok in zip(batch, results, strict=True):
                for done in callbacks:
                    done(ok)
