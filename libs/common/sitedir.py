"""The site directory: a site's public configuration, cached in Redis.

The frontend, status image and gateway need a site's theme, allowed domains and
operators on every widget load or status request, but must not query MySQL on those
paths. MySQL stays the source of truth; Redis holds a JSON copy per site (an hour, so
a missed invalidation heals itself), and whoever changes a site (console, CLI) calls
``invalidate``, which drops the copy and announces the change on a pub/sub channel so
in-process caches drop theirs too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import siteids
from libs.common.db import site_store
from libs.common.settings import Settings

# A copy older than this is re-read from MySQL even if no invalidation arrived.
CACHE_TTL_S = 3600
# Remembered "no such site" answers: long enough to absorb a burst of bad ids,
# short enough that a site created a moment later is found.
MISSING_TTL_S = 30


@dataclass(frozen=True)
class SiteConfig:
    site_id: str
    name: str
    theme: dict[str, Any]
    allowed_domains: list[str]
    transcript_emails: list[str]
    operators: list[tuple[str, str]]  # (bare jid, display name)


class UnknownSite(LookupError):
    """No site has this id (or the id is malformed); the message says which."""


class SiteDirectory:
    def __init__(self, redis: aioredis.Redis, engine: sa.Engine, settings: Settings) -> None:
        self._redis = redis
        self._engine = engine
        self._settings = settings

    def _key(self, site_id: str) -> str:
        return self._settings.redis_key("site", site_id, "config")

    @property
    def channel(self) -> str:
        return self._settings.redis_key("site-config")

    async def get(self, site_id: str) -> SiteConfig:
        """The site's configuration; UnknownSite if the id is malformed or unknown."""
        if not siteids.is_site_id(site_id):
            raise UnknownSite(f"{site_id!r} is not a site id: expected four groups of digits like 4324-24618-10-8812")
        raw = await self._redis.get(self._key(site_id))
        if raw == "missing":
            raise UnknownSite(f"no site {site_id}: check the id in your snippet")
        if raw:
            data = json.loads(raw)
            data["operators"] = [tuple(op) for op in data["operators"]]
            return SiteConfig(**data)
        config = await asyncio.to_thread(self._load, site_id)
        if config is None:
            await self._redis.set(self._key(site_id), "missing", ex=MISSING_TTL_S)
            raise UnknownSite(f"no site {site_id}: check the id in your snippet")
        await self._redis.set(self._key(site_id), json.dumps(asdict(config)), ex=CACHE_TTL_S)
        return config

    def _load(self, site_id: str) -> SiteConfig | None:
        with self._engine.connect() as conn:
            try:
                site = site_store.get_site(conn, site_id)
            except site_store.NotFound:
                return None
            operators = site_store.site_operators(conn, site_id)
        return SiteConfig(site.id, site.name, site.theme, site.allowed_domains, site.transcript_emails, operators)

    async def invalidate(self, site_id: str) -> None:
        """Call after changing a site in MySQL: every reader sees the change next time."""
        await self._redis.delete(self._key(site_id))
        await self._redis.publish(self.channel, site_id)

    async def changes(self) -> AsyncIterator[str]:
        """Site ids as they are invalidated (runs until cancelled)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        try:
            async for message in pubsub.listen():
                yield str(message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]


def invalidate_sync(settings: Settings, site_id: str) -> None:
    """``invalidate`` for synchronous callers (the `habla` command)."""
    import redis

    if settings.redis_sentinel_list:
        from redis.connection import parse_url
        from redis.sentinel import Sentinel

        # The URL gives the password and database; the Sentinels give the master.
        parsed = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
        credentials = {k: v for k, v in parsed.items() if k not in ("host", "port", "path")}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            settings.redis_sentinel_list, socket_timeout=5, sentinel_kwargs={"socket_timeout": 1}
        )
        client: redis.Redis = sentinel.master_for(settings.redis_master_name, **credentials)  # type: ignore[no-untyped-call]
    else:
        client = redis.Redis.from_url(settings.redis_url)
    try:
        client.delete(settings.redis_key("site", site_id, "config"))
        client.publish(settings.redis_key("site-config"), site_id)
    finally:
        client.close()
        if settings.redis_sentinel_list:
            for sentinel_client in sentinel.sentinels:
                sentinel_client.close()
