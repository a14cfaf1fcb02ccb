"""Operator presence with heartbeat expiry, and the site online state it decides.

Each site has a sorted set of available operator resources ("<bare jid>/<resource>")
scored by when their presence expires. The gateway refreshes it every heartbeat; if
the gateway dies, scores pass and the site goes offline by itself within the TTL.

The site's status ({"online", "operators_available"}) is a key of its own, written by
``recompute`` with the same TTL and announced on a pub/sub channel whenever it
changes, so readers (status image, widget) cache it and follow within a second. A
missing status key means offline.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from libs.common.settings import Settings

# KEYS[1] = available zset, KEYS[2] = status key, KEYS[3] = last announced count
# (kept apart from the status key: that one expires, and an expiry must still be
# announced as a change); ARGV[1] = now, ARGV[2] = ttl,
# ARGV[3] = channel, ARGV[4] = site id. Drops expired members, counts distinct
# operators, stores the status, publishes it if it changed. Returns the count.
_RECOMPUTE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local seen, count = {}, 0
for _, member in ipairs(members) do
  local bare = string.match(member, '^([^/]*)')
  if not seen[bare] then seen[bare] = true; count = count + 1 end
end
local status = cjson.encode({online = count > 0, operators_available = count})
local was = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('SET', KEYS[3], count, 'EX', 604800)
if count > 0 then
  redis.call('SET', KEYS[2], status, 'EX', ARGV[2])
else
  redis.call('DEL', KEYS[2])
end
if was ~= count then
  redis.call('PUBLISH', ARGV[3], cjson.encode({site_id = ARGV[4], online = count > 0, operators_available = count}))
end
return count
"""


@dataclass(frozen=True)
class SiteState:
    site_id: str
    online: bool
    operators_available: int


class OperatorPresence:
    """Written by the gateway: who is available, per site."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._recompute = redis.register_script(_RECOMPUTE)

    def _available_key(self, site_id: str) -> str:
        return self._settings.redis_key("site", site_id, "available")

    async def set_available(self, site_ids: Iterable[str], bare_jid: str, resource: str, available: bool) -> None:
        """Record one resource's availability (call again every heartbeat to keep it)."""
        member = f"{bare_jid}/{resource}"
        expires = time.time() + self._settings.presence_ttl_s
        for site_id in site_ids:
            if available:
                await self._redis.zadd(self._available_key(site_id), {member: expires})
                await self._redis.expire(self._available_key(site_id), self._settings.presence_ttl_s)
            else:
                await self._redis.zrem(self._available_key(site_id), member)
            await self.recompute(site_id)

    async def recompute(self, site_id: str) -> int:
        """Expire stale resources, refresh and (if changed) announce the site status."""
        return int(
            await self._recompute(
                keys=[
                    self._available_key(site_id),
                    site_status_key(self._settings, site_id),
                    self._settings.redis_key("site", site_id, "announced"),
                ],
                args=[time.time(), self._settings.presence_ttl_s, site_status_channel(self._settings), site_id],
            )
        )

    async def available_operators(self, site_id: str) -> list[str]:
        """Bare JIDs with at least one available, unexpired resource."""
        members = await self._redis.zrangebyscore(self._available_key(site_id), time.time(), "+inf")
        return sorted({str(m).split("/", 1)[0] for m in members})


def site_status_key(settings: Settings, site_id: str) -> str:
    return settings.redis_key("site", site_id, "status")


def site_status_channel(settings: Settings) -> str:
    return settings.redis_key("site-status")


class SiteStatusReader:
    """Read side, for the frontend and the status image."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings

    async def get(self, site_id: str) -> SiteState:
        raw = await self._redis.get(site_status_key(self._settings, site_id))
        if not raw:
            return SiteState(site_id, False, 0)
        data = json.loads(raw)
        return SiteState(site_id, bool(data["online"]), int(data["operators_available"]))

    async def changes(self) -> AsyncIterator[SiteState]:
        """Every status change as it is announced (runs until cancelled)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(site_status_channel(self._settings))
        try:
            async for message in pubsub.listen():
                data = json.loads(message["data"])
                yield SiteState(data["site_id"], bool(data["online"]), int(data["operators_available"]))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
