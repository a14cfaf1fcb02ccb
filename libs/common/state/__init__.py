"""Shared state in Redis: sessions, conversation logs, operator presence, site status.

What Redis holds may be lost if Redis dies *except* conversation lines, which the
archive consumer also writes to MySQL; a frontend rebuilds a lost log from there only
through the transcript, so run Redis with persistence in production.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from libs.common.settings import Settings

# Connections per process: a request holds one only for a single command, so 200 serve
# thousands of concurrent visitors; Redis accepts 10,000 clients by default.
MAX_CONNECTIONS = 200
# A caller waits this long for a free connection before failing (a 503-worthy stall).
CONNECTION_WAIT_S = 5


def connect(settings: Settings) -> aioredis.Redis:
    """A pooled client (decode_responses: every value is str).

    The pool *waits* for a free connection: redis-py's default pool (since redis-py 6)
    raises "Too many connections" past 100, which turned a burst of a few hundred
    concurrent visitors into HTTP 500s in the frontend benchmark.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        decode_responses=True,
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
        timeout=CONNECTION_WAIT_S,
        # After a Redis restart every pooled connection is dead and fails its next
        # command once. One immediate retry on a fresh connection hides that. Safe
        # here because every write we make is idempotent or harmless to repeat: log
        # appends dedupe by message id, presence and sessions are plain sets, and a
        # rate-limit counter at worst counts one request twice.
        retry=Retry(NoBackoff(), retries=1),
        retry_on_error=[RedisConnectionError],
    )
    # from_pool: the client owns the pool, so aclose() also closes its connections.
    return aioredis.Redis.from_pool(pool)
