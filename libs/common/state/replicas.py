"""A write acknowledged only once the replica has it (HABLA_REDIS_WAIT_MS).

Redis replicates asynchronously: a line the master appended and answered can be lost
when Sentinel promotes a replica that had not received it yet, although the widget or
the operator was already told "sent". So after a conversation-log append we send
``WAIT 1 <ms>`` on the same connection (WAIT counts the replicas that have every write
this connection made) and the caller acknowledges the line only once a replica has it.

This keeps the promise with **one replica** per master (Sentinel's usual pair): the
only server Sentinel can promote is the one that confirmed every acknowledged line.
When WAIT answers 0 the write counts as failed (``ReplicaLagging``, a Redis
ConnectionError like any outage) and the caller retries with the same message id (the
append is idempotent: the retry only waits again). That is also what fences a master
that Sentinel has just replaced but not yet demoted (a planned ``SENTINEL FAILOVER``
leaves it answering for a few seconds): its replica was taken from it, so nothing it
accepts is acknowledged, and once demoted it answers READONLY and the client goes to the
new master. The price: while a master has no replica (after a failover, until the lost
server is back as a replica) chat lines are refused, and the callers retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


class ReplicaLagging(RedisConnectionError):
    """No replica confirmed a write in time: it is not acknowledged (retry it)."""


class ReplicaWait:
    def __init__(self, redis: aioredis.Redis, wait_ms: int) -> None:
        self._redis = redis
        self._wait_ms = max(wait_ms, 0)

    @property
    def enabled(self) -> bool:
        return self._wait_ms > 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[aioredis.Redis]:
        """A client for the writes to confirm: one connection when waiting (WAIT
        counts that connection's writes), the pooled client otherwise."""
        if not self.enabled:
            yield self._redis
            return
        async with self._redis.client() as single:
            yield single

    async def confirm(self, client: aioredis.Redis) -> None:
        """Return once a replica has every write ``client`` made (see the module doc)."""
        if not self.enabled:
            return
        try:
            acked = int(await client.execute_command("WAIT", 1, self._wait_ms))  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            # "WAIT cannot be used with replica instances": Sentinel demoted this master
            # between the append and the WAIT; whether the new master has the line is
            # unknown, so it is not acknowledged (the retry goes to the new master).
            raise ReplicaLagging(f"the Redis master changed during the write ({exc}); try again") from exc
        if acked < 1:
            raise ReplicaLagging(f"no Redis replica confirmed the write within {self._wait_ms} ms; try again")
