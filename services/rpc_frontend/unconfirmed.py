"""Lines in the log that the broker never confirmed, published again by the frontend.

A visitor's line is appended to the Redis log *before* it is published, so a frontend
that dies between the two, or a broker that refuses the publish while the widget is
closed, leaves a line the visitor saw but the operator never got. The widget resends
such a line while it is open; this covers the widget that is gone. Each line is marked
here before its publish and unmarked after the confirm; a sweep (one instance at a time,
under a Redis lease) publishes again every line marked for longer than GRACE_S, with
its own message id, which every consumer dedupes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from libs.common import codec, topology
from libs.common.lease import Lease
from libs.common.messaging import Bus
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog

log = logging.getLogger(__name__)

# A publish waits at most 5 s for its confirm (libs.common.messaging), and the widget
# resends after 2 s: a line still marked after 15 s has lost its publisher.
GRACE_S = 15.0
# How often each instance tries to sweep; the lease lets one of them do it.
SWEEP_INTERVAL_S = 5.0
LEASE_MS = 30_000
# Lines published again per sweep; the rest wait a round (bounds one sweep's work).
BATCH = 200
# Confirmed lines unmarked per ZREM.
UNMARK_BATCH = 500


@dataclass(frozen=True)
class Unconfirmed:
    """One line in flight: where to find it in the log and whom it is from."""

    conversation_id: str
    message_id: str
    site_id: str
    visitor_id: str
    page_url: str

    def member(self) -> str:
        # sort_keys: the same line always makes the same member, so it can be removed.
        return json.dumps(self.__dict__, sort_keys=True)

    def tail(self) -> str:
        """The member after its conversation id: sort_keys puts "conversation_id" first,
        so the send script (lines.py) splices an id it has just learnt in front of this."""
        return self.member()[len('{"conversation_id": ') + len(json.dumps(self.conversation_id)) :]


class UnconfirmedLines:
    def __init__(self, redis: aioredis.Redis, bus: Bus, log_: ConversationLog, settings: Settings) -> None:
        self._redis = redis
        self._bus = bus
        self._log = log_
        self._key = settings.redis_key("frontend", "unconfirmed")
        self._lease = Lease(redis, settings.redis_key("frontend", "republisher"), LEASE_MS)
        # Confirmed lines not unmarked yet, and the task that unmarks them in batches.
        self._done: set[str] = set()
        self._unmarking: asyncio.Task[None] | None = None

    async def mark(self, line: Unconfirmed) -> None:
        await self._redis.zadd(self._key, {line.member(): time.time()})

    def confirmed(self, line: Unconfirmed) -> None:
        """The broker confirmed the line: unmark it, in the background. The answer to the
        widget need not wait for this: a mark left behind (this process died, Redis
        refused) only makes the sweep publish the line again, which consumers dedupe.
        Lines confirmed while one ZREM is in flight go together in the next."""
        self._done.add(line.member())
        if self._unmarking is None or self._unmarking.done():
            self._unmarking = asyncio.create_task(self._unmark())

    async def _unmark(self) -> None:
        while self._done:
            batch = [self._done.pop() for _ in range(min(len(self._done), UNMARK_BATCH))]
            try:
                await self._redis.zrem(self._key, *batch)
            except Exception:  # Redis down: the sweep publishes these again (deduped)
                log.warning("could not unmark confirmed lines", extra={"lines": len(batch)}, exc_info=True)

    async def flush(self) -> None:
        """Wait until every line confirmed so far is unmarked (or given up on)."""
        if self._unmarking is not None and not self._unmarking.done():
            await asyncio.shield(self._unmarking)

    async def sweep(self, grace_s: float = GRACE_S) -> int:
        """Publish again the lines marked for longer than ``grace_s``; returns how many."""
        await self.flush()  # lines this process saw confirmed are not published again
        if not await self._lease.acquire():
            return 0
        try:
            due = await self._redis.zrangebyscore(self._key, "-inf", time.time() - grace_s, start=0, num=BATCH)
            published = 0
            for member in due:
                text = str(member)
                if await self._republish(text):
                    published += 1
                await self._redis.zrem(self._key, text)
            return published
        finally:
            await self._lease.release()

    async def _republish(self, member: str) -> bool:
        try:
            line = Unconfirmed(**json.loads(member))
        except (ValueError, TypeError):
            return False  # not one of ours: forget it
        seq = await self._log.seq_of(line.conversation_id, line.message_id)
        entries = await self._log.after(line.conversation_id, seq - 1, 1) if seq else []
        if not entries or entries[0].get("message_id") != line.message_id:
            return False  # the log no longer has it (expired, or Redis lost it)
        entry = entries[0]
        message = codec.ChatMessage(
            message_id=line.message_id,
            conversation_id=line.conversation_id,
            site_id=line.site_id,
            visitor_id=line.visitor_id,
            sender=codec.SenderKind.VISITOR,
            body=str(entry.get("body") or ""),
            sent_at_ms=int(entry.get("sent_at_ms") or 0),
            seq=int(entry["seq"]),
            page_url=line.page_url or None,
        )
        await self._bus.publish(topology.VISITOR, f"{line.site_id}.message", message)
        log.warning(
            "line published again (its publisher never got a confirm)",
            extra={"conversation": line.conversation_id, "seq": message.seq},
        )
        return True


async def republish_forever(lines: UnconfirmedLines) -> None:
    """Runs until cancelled."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        try:
            await lines.sweep()
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis or RabbitMQ down: the next round catches up
            log.warning("republishing unconfirmed lines failed; trying again", exc_info=True)
