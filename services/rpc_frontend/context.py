"""Everything the frontend's handlers depend on, built once by main() (or a test)."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from libs.common.db.history import seq_floor
from libs.common.messaging import Bus
from libs.common.observability import Drain
from libs.common.ratelimit import RateLimiter
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory
from libs.common.state.presence import SiteStatusReader
from libs.common.state.shared import SharedConnection
from services.rpc_frontend.chat import VisitorChat
from services.rpc_frontend.hub import Hub
from services.rpc_frontend.sitecache import SiteCache


@dataclass
class Frontend:
    settings: Settings
    # state.connect's client: requests' commands share its one pipelined connection
    # (a quarter of the pooled client's CPU per round trip; see state.shared), while
    # pub/sub, pipelines and blocking commands take connections of its pool.
    redis: SharedConnection
    bus: Bus
    # Only the site directory (on a cache miss), /demo (when no site is named) and a
    # conversation's first line after a Redis restart (its seq floor) read MySQL.
    engine: sa.Engine
    chat: VisitorChat = field(init=False)
    sites: SiteDirectory = field(init=False)
    status: SiteStatusReader = field(init=False)
    # What requests read: configs and states in memory while follow.follow_sites runs.
    sitecache: SiteCache = field(init=False)
    limits: RateLimiter = field(init=False)
    hub: Hub = field(default_factory=Hub)
    drain: Drain = field(default_factory=Drain)

    def __post_init__(self) -> None:
        self.chat = VisitorChat(self.redis, self.bus, self.settings, seq_floor(self.engine))
        self.sites = SiteDirectory(self.redis, self.engine, self.settings)
        self.status = SiteStatusReader(self.redis, self.settings)
        self.sitecache = SiteCache(self.redis, self.sites, self.settings)
        self.limits = RateLimiter(self.redis, self.settings)
