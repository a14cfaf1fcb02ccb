"""Shared state in Redis: sessions, conversation logs, operator presence, site status.

What Redis holds may be lost if Redis dies *except* conversation lines, which the
archive consumer also writes to MySQL; a frontend rebuilds a lost log from there only
through the transcript, so run Redis with persistence in production.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from libs.common.settings import Settings
from libs.common.state.shared import SharedConnection

# Connections per process: a request holds one only for a single command, so 200 serve
# thousands of concurrent visitors; Redis accepts 10,000 clients by default.
MAX_CONNECTIONS = 200
# A caller waits this long for a free connection before failing (a 503-worthy stall).
CONNECTION_WAIT_S = 5


# How long a question to one Sentinel may take before the next one is asked: Sentinels
# answer from memory in well under a millisecond; one that is down must not stall a
# reconnect for long.
SENTINEL_TIMEOUT_S = 0.5


class _SentinelBlockingPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """redis-py's Sentinel pool (each new connection asks the Sentinels where the master
    is; a demoted master's READONLY answer drops the connection) with the blocking
    pool's wait for a free connection, as for a single Redis."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            # The client is closing (a master change disconnects only idle ones):
            # the connections to the Sentinels go too (they reopen if used again).
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.connection_pool.disconnect()


def connect(settings: Settings) -> SharedConnection:
    """A client whose plain commands share one pipelined connection, over a pool for
    pipelines, pub/sub, ``client()`` and blocking commands (see state.shared);
    decode_responses: every value is str.

    The pool *waits* for a free connection: redis-py's default pool (since redis-py 6)
    raises "Too many connections" past 100, which turned a burst of a few hundred
    concurrent visitors into HTTP 500s in the frontend benchmark.

    With HABLA_REDIS_SENTINELS the master is found through the Sentinels, and found
    again after a failover: commands fail (ConnectionError, as in any Redis outage)
    only between the master's loss and the Sentinels' promotion of a replica.
    """
    options: dict[str, Any] = dict(
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
    sentinels = settings.redis_sentinel_list
    if not sentinels:
        pool = aioredis.BlockingConnectionPool.from_url(settings.redis_url, **options)
    else:
        # The URL still gives the password, user and database; its host is ignored.
        from_url = parse_url(settings.redis_url)
        for key in ("host", "port", "path", "connection_class"):
            from_url.pop(key, None)  # type: ignore[misc]
        manager = Sentinel(  # type: ignore[no-untyped-call]
            sentinels,
            sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S},
        )
        pool = _SentinelBlockingPool(  # type: ignore[no-untyped-call]
            settings.redis_master_name, manager, **{**from_url, **options}
        )
    # from_pool: the client owns the pool, so aclose() closes the shared connection and
    # the pool's connections.
    return SharedConnection.from_pool(pool)


async def master_address(settings: Settings) -> tuple[str, int]:
    """Where the Redis master is now (for code that opens its own raw connection)."""
    sentinels = settings.redis_sentinel_list
    if not sentinels:
        url = urllib.parse.urlsplit(settings.redis_url)
        return url.hostname or "127.0.0.1", url.port or 6379
    manager = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S},
    )
    try:
        host, port = await manager.discover_master(settings.redis_master_name)
    finally:
        for client in manager.sentinels:
            await client.aclose()
    return str(host), int(port)
