"""Which RabbitMQ messages already reached an operator's stream (by message id).

The mark and the stanzas leave the process in the same event-loop step: the gateway
hands the stanzas to the XMPP socket and, with no ``await`` in between, writes the
Redis command ``SET <id> NX EX`` to a Redis socket of its own (``mark_now``); only
then does it wait for Redis's answer and acknowledge the RabbitMQ message. A SIGKILL
lands either before both writes (the message is redelivered and shown once) or after
both (the kernel still delivers both buffers: the redelivery finds the mark and shows
nothing). A redis-py command cannot do this: it first awaits a pooled connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse

import redis.asyncio as aioredis

from libs.common.settings import Settings

# RabbitMQ redelivers within seconds of a consumer's death; retries wait at most the
# last HABLA_AMQP_RETRY_DELAYS_MS (30 s). A day covers any realistic redelivery.
SEEN_TTL_S = 24 * 3600


def _resp(*parts: str | int) -> bytes:
    """A Redis command in RESP (the protocol's array of bulk strings)."""
    encoded = [str(p).encode() for p in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)


class Delivered:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._unanswered = 0

    def _key(self, message_id: str) -> str:
        return self._settings.redis_key("gw", "sent", message_id)

    async def seen(self, message_id: str) -> bool:
        return bool(await self._redis.exists(self._key(message_id)))

    async def ready(self) -> None:
        """Open (or reopen) the marking connection; call before handing stanzas."""
        if self._writer is not None and not self._writer.is_closing():
            return
        url = urllib.parse.urlsplit(self._settings.redis_url)
        self._reader, self._writer = await asyncio.open_connection(url.hostname or "127.0.0.1", url.port or 6379)
        self._unanswered = 0
        if url.password:
            self._send(
                *(["AUTH", urllib.parse.unquote(url.username)] if url.username else ["AUTH"]),
                urllib.parse.unquote(url.password),
            )
        database = (url.path or "/0").lstrip("/") or "0"
        self._send("SELECT", database)
        await self.confirm()

    def _send(self, *parts: str | int) -> None:
        if self._writer is None or self._writer.is_closing():
            raise ConnectionError("the marking connection to Redis is closed")
        self._writer.write(_resp(*parts))
        self._unanswered += 1

    def mark_now(self, message_id: str) -> None:
        """Write the mark to Redis's socket now, synchronously (see the module doc)."""
        self._send("SET", self._key(message_id), "1", "NX", "EX", SEEN_TTL_S)

    async def confirm(self) -> None:
        """Wait for Redis to answer every mark written so far."""
        assert self._reader is not None
        while self._unanswered:
            line = await self._reader.readline()
            if not line:
                self._writer = None
                raise ConnectionError("Redis closed the marking connection")
            self._unanswered -= 1
            if line.startswith(b"-"):
                raise RuntimeError(f"Redis refused a delivery mark: {line.decode(errors='replace').strip()}")

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
