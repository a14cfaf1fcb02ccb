"""RabbitMQ consumers, one module per queue.

Each handles a visitor's messages one at a time, in queue order (a visitor's lines must
reach the operator in the order they were written), different visitors at once, and
acknowledges a message only after the XMPP server confirmed what it carries (the
component's ping barrier, shared by every lane waiting at the same time). While the
stream is down, messages wait unacknowledged; a stream lost before the barrier means
the stanzas are written again after the reconnect (with the same stanza id, so a
client shows them once); a gateway that dies leaves them to be redelivered, and the
message-id mark (services.im_gateway.dedupe), set after the barrier, keeps a
confirmed message from being sent twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from libs.common.messaging import Envelope
from services.im_gateway.desk import Desk
from services.im_gateway.lanes import Lanes
from services.im_gateway.outbox import XmppUnavailable

log = logging.getLogger(__name__)

# While XMPP is down, re-check this often (reconnect backoff starts at 0.5 s).
STREAM_WAIT_S = 0.2


class Stream(Protocol):
    """The part of the component a consumer needs (services.im_gateway.component)."""

    ready: asyncio.Event

    async def confirm(self) -> None: ...


class Unhandled(Exception):
    """A message type this queue should never carry: dead-letter it."""


# Visitors handled at once. Each lane waits mostly on Redis and Prosody round trips;
# 64 overlap them well on 2 cores and stay far below the prefetch of 200.
LANES = 64


class SerialConsumer:
    """Settle envelopes from Bus.consume(manual=True) in order per visitor, visitors at once."""

    def __init__(self, desk: Desk, stream: Stream) -> None:
        self.desk = desk
        self._stream = stream
        self._ready = stream.ready
        self._lanes = Lanes(LANES)

    async def receive(self, envelope: Envelope) -> None:
        key = str(getattr(envelope.struct, "visitor_id", "") or "")
        await self._lanes.submit(key, lambda: self._settle(envelope))

    async def close(self) -> None:
        await self._lanes.close()

    async def _settle(self, envelope: Envelope) -> None:
        while True:
            await self._ready.wait()
            try:
                if not await self.desk.delivered.seen(envelope.message_id):
                    await self.desk.delivered.ready()
                    await self.consume(envelope.type_name, envelope.struct)
                    await self._stream.confirm()  # the server has it: now it is delivered
                    await self.desk.delivered.mark_now(envelope.message_id)
            except XmppUnavailable:
                await asyncio.sleep(STREAM_WAIT_S)
                continue
            except Unhandled as exc:
                await envelope.dead_letter(str(exc))
                return
            except Exception as exc:  # retried with backoff by the bus, then dead-lettered
                log.exception("message handling failed", extra={"id": envelope.message_id})
                await envelope.retry(f"{exc.__class__.__name__}: {exc}")
                return
            await envelope.ack()
            return

    async def consume(self, type_name: str, struct: Any) -> None:
        raise NotImplementedError
