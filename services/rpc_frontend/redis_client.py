"""The frontend's Redis client: a pool that waits for a free connection under load.

``libs.common.state.connect`` uses redis-py's default pool, which (since redis-py 6)
holds at most 100 connections and *raises* "Too many connections" beyond that: a
burst of a few hundred concurrent visitors turned into HTTP 500s in the benchmark.
A blocking pool queues the request for a moment instead.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from libs.common.settings import Settings

# Connections per frontend process: each request holds one only for a single command,
# so 200 serve thousands of concurrent visitors; Redis accepts 10,000 clients by default.
MAX_CONNECTIONS = 200
# A request waits this long for a free connection before failing (a 503-worthy stall).
CONNECTION_WAIT_S = 5


def connect(settings: Settings) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        decode_responses=True,
        health_check_interval=30,  # as libs.common.state.connect
        max_connections=MAX_CONNECTIONS,
        timeout=CONNECTION_WAIT_S,
    )
    return aioredis.Redis(connection_pool=pool)
