"""Which RabbitMQ messages already reached the XMPP server (by message id).

The mark is set after the component's barrier (services.im_gateway.component.confirm:
the server answered a ping sent after the stanzas), then the RabbitMQ message is
acknowledged. A gateway that dies before the mark leaves the message to be
redelivered and sent again under the same stanza id (a client shows it once); one
that dies after the mark but before the ack gets it redelivered, finds the mark and
sends nothing. The mark travels on a Redis connection of its own, written without
first awaiting a pooled connection (``mark_now``), so it costs one round trip, shared
by the marks of every message one barrier confirmed (one write for all).
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections import deque
from typing import Any

import redis.asyncio as aioredis

from libs.common import state
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
        self._writer: asyncio.StreamWriter | None = None
        self._replies: asyncio.Task[None] | None = None
        self._waiting: deque[asyncio.Future[None]] = deque()  # one per command, in order
        self._opening = asyncio.Lock()
        self._outgoing: list[bytes] = []  # commands not yet written (see _send)

    def _key(self, message_id: str) -> str:
        return self._settings.redis_key("gw", "sent", message_id)

    def key(self, message_id: str) -> str:
        """The mark's key (for a script that checks it with other keys)."""
        return self._key(message_id)

    async def seen(self, message_id: str) -> bool:
        return bool(await self._redis.exists(self._key(message_id)))

    def queue_seen(self, pipe: Any, message_id: str) -> None:
        """``seen`` as a command on a pipeline (its answer: 1 if marked)."""
        pipe.exists(self._key(message_id))

    async def ready(self) -> None:
        """Open (or reopen) the marking connection; call before handing stanzas."""
        async with self._opening:
            if self._writer is not None and not self._writer.is_closing():
                return
            url = urllib.parse.urlsplit(self._settings.redis_url)
            # The master as the Sentinels name it now, when there are Sentinels.
            reader, self._writer = await asyncio.open_connection(*await state.master_address(self._settings))
            self._replies = asyncio.create_task(self._read_replies(reader))
            if url.password:
                user = [urllib.parse.unquote(url.username)] if url.username else []
                await self._send("AUTH", *user, urllib.parse.unquote(url.password))
            await self._send("SELECT", (url.path or "/0").lstrip("/") or "0")

    def _send(self, *parts: str | int) -> asyncio.Future[None]:
        if self._writer is None or self._writer.is_closing():
            raise ConnectionError("the marking connection to Redis is closed")
        # Commands of one event-loop turn go out in one write: a barrier's answer wakes
        # every message it covers at once, and each mark of its own was a syscall.
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(_resp(*parts))
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(answered)
        return answered

    def _flush(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)
        # else: the reader fails every waiting command when the connection ends

    def mark_now(self, message_id: str) -> asyncio.Future[None]:
        """Queue the mark for Redis's socket now, without awaiting anything (see the
        module doc): written at the end of this event-loop turn with any other marks;
        the future resolves when Redis has answered."""
        return self._send("SET", self._key(message_id), "1", "NX", "EX", SEEN_TTL_S)

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        # Redis answers in command order: each reply settles the oldest waiting future.
        try:
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("Redis closed the marking connection")
                if line.startswith(b"$") and line[1:2] != b"-":
                    await reader.readline()  # a bulk reply's payload (not sent for SET/SELECT)
                answered = self._waiting.popleft()
                if line.startswith(b"-"):
                    answered.set_exception(RuntimeError(f"Redis refused: {line.decode(errors='replace').strip()}"))
                else:
                    answered.set_result(None)
        except (ConnectionError, OSError) as exc:
            self._fail_waiting(exc)
            if self._writer is not None:
                self._writer.close()
            self._writer = None

    def _fail_waiting(self, exc: BaseException) -> None:
        self._outgoing.clear()  # their futures fail below: never write them to a new connection
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError(str(exc)))

    async def close(self) -> None:
        if self._replies is not None:
            self._replies.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replies
            self._replies = None
        self._fail_waiting(ConnectionError("closed"))
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
