"""Which RabbitMQ messages already reached an operator's stream (by message id).

Marked only after the stanza was handed to the stream, then the message is acked: a
crash between the two redelivers a message the operator already saw, and this mark
makes the redelivery a no-op. (A crash between handing and marking — microseconds —
is the one window where a duplicate remains possible; losing a line is worse.)
"""

from __future__ import annotations

import redis.asyncio as aioredis

from libs.common.settings import Settings

# RabbitMQ redelivers within seconds of a consumer's death; retries wait at most the
# last HABLA_AMQP_RETRY_DELAYS_MS (30 s). A day covers any realistic redelivery.
SEEN_TTL_S = 24 * 3600


class Delivered:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings

    def _key(self, message_id: str) -> str:
        return self._settings.redis_key("gw", "sent", message_id)

    async def seen(self, message_id: str) -> bool:
        return bool(await self._redis.exists(self._key(message_id)))

    async def mark(self, message_id: str) -> None:
        await self._redis.set(self._key(message_id), "1", nx=True, ex=SEEN_TTL_S)
