"""Everything the frontend's handlers depend on, built once by main() (or a test)."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common.db.history import seq_floor
from libs.common.messaging import Bus
from libs.common.observability import Drain
from libs.common.ratelimit import RateLimiter
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory
from libs.common.state.presence import SiteStatusReader
from services.rpc_frontend.chat import VisitorChat
from services.rpc_frontend.hub import Hub
from services.rpc_frontend.shared_redis import SharedConnection
from services.rpc_frontend.sitecache import SiteCache


@dataclass
class Frontend:
    settings: Settings
    redis: aioredis.Redis  # pooled: pub/sub, pipelines, blocking commands
    bus: Bus
    # Only the site directory (on a cache miss), /demo (when no site is named) and a
    # conversation's first line after a Redis restart (its seq floor) read MySQL.
    engine: sa.Engine
    # Every other command: the same pool's server on one pipelined connection (requests'
    # round trips cost a quarter of the pooled client's CPU; see shared_redis).
    shared: SharedConnection = field(init=False)
    chat: VisitorChat = field(init=False)
    sites: SiteDirectory = field(init=False)
    status: SiteStatusReader = field(init=False)
    # What requests read: configs and states in memory while follow.follow_sites runs.
    sitecache: SiteCache = field(init=False)
    limits: RateLimiter = field(init=False)
    hub: Hub = field(default_factory=Hub)
    drain: Drain = field(default_factory=Drain)

    def __post_init__(self) -> None:
        self.shared = SharedConnection(connection_pool=self.redis.connection_pool)
        self.chat = VisitorChat(self.shared, self.bus, self.settings, seq_floor(self.engine))
        self.sites = SiteDirectory(self.shared, self.engine, self.settings)
        self.status = SiteStatusReader(self.shared, self.settings)
        self.sitecache = SiteCache(self.shared, self.sites, self.settings)
        self.limits = RateLimiter(self.shared, self.settings)

    async def aclose(self) -> None:
        """Close the shared connection (the pooled client is the caller's)."""
        await self.shared.aclose()
