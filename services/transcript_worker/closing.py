"""Closing a conversation, exactly once, and the idle sweep (no AMQP: publishes through
the ``Publisher`` it is given).

Closing is a claim plus idempotent side effects:

1. ``claim_close`` (conditional UPDATE in MySQL) decides who closed it: exactly one caller;
2. the side effects are each safe to repeat: remove conversation_id from the visitor's
   session (only if it still names this conversation), append the "chat has ended"
   line under a fixed message id (the log ignores a repeated id), tell the visitor's
   frontend, publish ConversationClosed under a fixed message id;
3. a Redis marker records that the side effects are done.

A closer that dies between 1 and 3 leaves a closed conversation without its marker;
the next close attempt (the redelivered message, or the sweep's repair pass over closed
conversations without a transcript) finishes the side effects.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
import sqlalchemy as sa
from prometheus_client import Counter

from libs.common import codec, topology
from libs.common.db.history import seq_floor
from libs.common.lease import Lease, LeaseBusy
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog, system_line
from services.transcript_worker import conversation_store

log = logging.getLogger(__name__)

CLOSED = Counter("habla_worker_conversations_closed_total", "Conversations closed, by reason", ["reason"])

ENDED_LINE = "The chat has ended."
# Markers and per-conversation locks outlive any redelivery or repair pass (repairs
# look back one day) by a wide margin.
MARKER_TTL_S = 30 * 24 * 3600
# Per-conversation locks are renewed while held (Lease.held), so their ttl only says how
# long a worker that died holding one blocks the others: 5 s.
LOCK_TTL_MS = 5_000
# A consumer waits this long for another worker's lock: two lock lifetimes, so a dead
# holder's lock has expired by then; a holder still renewing it is alive and busy with
# an identical copy, and the waiting copy is dropped.
LOCK_WAIT_S = 2 * LOCK_TTL_MS / 1000
# How far back the repair pass looks for closed conversations without a transcript,
# and how long it leaves the normal path to finish first (transcripts wait for the
# archive up to HABLA_TRANSCRIPT_WAIT_S, so give them twice that plus a margin).
REPAIR_LOOKBACK = datetime.timedelta(days=1)
# Conversations handled per sweep: bounds one sweep's work; the next sweep continues.
SWEEP_LIMIT = 500

# Only these "end the chat" at once (CONTRACTS.md item 3).
CLOSING_ACTIONS = {"end": "OPERATOR_ENDED", "block": "BLOCKED"}

# KEYS[1] = visitor session hash; ARGV[1] = conversation id. Remove the session's
# conversation_id only if it still names this conversation (a new chat may have begun).
_FORGET_CONVERSATION = """
if redis.call('HGET', KEYS[1], 'conversation_id') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'conversation_id')
end
return 0
"""


class Publisher(Protocol):
    async def publish(
        self,
        exchange: str,
        routing_key: str,
        struct: Any,
        *,
        message_id: str | None = None,
        mandatory: bool = True,
        headers: dict[str, Any] | None = None,
    ) -> str: ...


Busy = LeaseBusy  # another worker is closing this conversation right now


def _now_ms() -> int:
    return int(time.time() * 1000)


class Closer:
    def __init__(self, engine: sa.Engine, redis: aioredis.Redis, publisher: Publisher, settings: Settings) -> None:
        self._engine = engine
        self._redis = redis
        self._publisher = publisher
        self._settings = settings
        self._log = ConversationLog(redis, settings, seq_floor(engine))
        self._forget = redis.register_script(_FORGET_CONVERSATION)

    def done_key(self, conversation_id: str) -> str:
        return self._settings.redis_key("worker", "closed", conversation_id)

    async def close(
        self,
        conversation_id: str,
        site_id: str,
        visitor_id: str,
        reason: str,
        operator_jid: str | None = None,
        wait_s: float = LOCK_WAIT_S,
    ) -> bool:
        """Close the conversation; True if this call closed it (False: it already was).
        Busy if another worker holds the conversation for longer than ``wait_s``."""
        lock = Lease(self._redis, self._settings.redis_key("worker", "closing", conversation_id), LOCK_TTL_MS)
        async with lock.held(wait_s):
            closed_at_ms = _now_ms()
            claimed = await asyncio.to_thread(
                conversation_store.claim_close,
                self._engine,
                conversation_id,
                site_id,
                visitor_id,
                reason,
                closed_at_ms,
            )
            if not claimed:
                if await self._redis.exists(self.done_key(conversation_id)):
                    return False
                # Closed earlier by a closer that died before finishing: finish its work
                # with the reason and time it recorded.
                row = await asyncio.to_thread(conversation_store.conversation, self._engine, conversation_id)
                reason = str(row.close_reason or reason)
                closed_at_ms = int(row.closed_at.replace(tzinfo=datetime.UTC).timestamp() * 1000)
                log.info("finishing an interrupted close", extra={"conversation": conversation_id})
            await self._side_effects(conversation_id, site_id, visitor_id, reason, operator_jid, closed_at_ms)
            await self._redis.set(self.done_key(conversation_id), closed_at_ms, ex=MARKER_TTL_S)
            if claimed:
                CLOSED.labels(reason.lower()).inc()
                log.info("conversation closed", extra={"conversation": conversation_id, "reason": reason})
            return claimed

    async def _side_effects(
        self,
        conversation_id: str,
        site_id: str,
        visitor_id: str,
        reason: str,
        operator_jid: str | None,
        closed_at_ms: int,
    ) -> None:
        ended_id = f"{conversation_id}:ended"
        # The transcript covers the lines before our "ended" line (on a repeat, that
        # line is already there and keeps its seq).
        ended_seq = await self._log.seq_of(conversation_id, ended_id)
        last_seq = ended_seq - 1 if ended_seq else await self._log.last_seq(conversation_id)
        if last_seq == 0:
            # The Redis log expired (days idle): MySQL's archived last seq is the truth.
            row = await asyncio.to_thread(conversation_store.conversation, self._engine, conversation_id)
            last_seq = int(row.last_seq) if row is not None else 0

        session_key = self._settings.redis_key("visitor", visitor_id)
        session = cast(dict[str, str], await self._redis.hgetall(session_key))
        await self._forget(keys=[session_key], args=[conversation_id])
        await self._log.append(
            conversation_id,
            ended_id,
            system_line(ENDED_LINE, closed_at_ms),
        )
        frontend_id = str(session.get("frontend_id") or "")
        if frontend_id:
            action = codec.OperatorAction(
                action_id=ended_id,
                conversation_id=conversation_id,
                site_id=site_id,
                visitor_id=visitor_id,
                operator_jid=operator_jid or "",
                action="ended",
                at_ms=closed_at_ms,
            )
            delivery = codec.VisitorDelivery(
                visitor_id=visitor_id, site_id=site_id, conversation_id=conversation_id, action=action
            )
            # Not mandatory: a departed frontend is normal; the widget reads the log anyway.
            await self._publisher.publish(topology.DELIVER, frontend_id, delivery, message_id=ended_id, mandatory=False)
        closed = codec.ConversationClosed(
            conversation_id=conversation_id,
            site_id=site_id,
            visitor_id=visitor_id,
            reason=getattr(codec.CloseReason, reason),
            last_seq=last_seq,
            closed_at_ms=closed_at_ms,
            operator_jid=operator_jid,
        )
        await self._publisher.publish(
            topology.CONVERSATION, f"{site_id}.closed", closed, message_id=f"{conversation_id}:closed"
        )


class IdleSweeper:
    """Closes idle conversations; one sweeper at a time across all worker processes."""

    def __init__(self, engine: sa.Engine, redis: aioredis.Redis, closer: Closer, settings: Settings) -> None:
        self._engine = engine
        self._redis = redis
        self._closer = closer
        self._settings = settings
        self._log = ConversationLog(redis, settings)
        # Sweep four times per idle period, so a conversation closes at most a quarter
        # late; never more often than every 0.5 s, never less than every minute.
        self.interval_s = min(max(settings.conversation_idle_s / 4, 0.5), 60.0)
        # The lease outlives three sweeps: a holder that misses one renewal keeps it.
        self.lease = Lease(redis, settings.redis_key("worker", "sweeper"), int(self.interval_s * 3000))

    async def run(self) -> None:
        try:
            while True:
                try:
                    if await self.lease.acquire():
                        await self.sweep_once()
                except Exception:  # a failed sweep (MySQL down …) is retried next interval
                    log.exception("idle sweep failed")
                await asyncio.sleep(self.interval_s)
        finally:
            try:
                await self.lease.release()
            except Exception:
                log.warning("could not release the sweeper lease; it expires by itself")

    async def sweep_once(self) -> int:
        """One pass: close idle conversations, finish interrupted closes. Returns closes."""
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        idle_since = now - datetime.timedelta(seconds=self._settings.conversation_idle_s)
        closed = 0
        candidates = await asyncio.to_thread(
            conversation_store.idle_conversations, self._engine, idle_since, SWEEP_LIMIT
        )
        for conv in candidates:
            if await self._active_in_log(conv.id, idle_since):
                continue  # the archive lags behind the live log: not idle after all
            try:
                if await self._closer.close(conv.id, conv.site_id, conv.visitor_id, "IDLE", wait_s=0):
                    closed += 1
            except Busy:
                continue
        grace = datetime.timedelta(seconds=2 * self._settings.transcript_wait_s + 60)
        for conv in await asyncio.to_thread(
            conversation_store.closed_without_transcript, self._engine, now - REPAIR_LOOKBACK, now - grace, SWEEP_LIMIT
        ):
            if not await self._redis.exists(self._closer.done_key(conv.id)):
                try:
                    await self._closer.close(conv.id, conv.site_id, conv.visitor_id, "IDLE", wait_s=0)
                except Busy:
                    continue
        return closed

    async def _active_in_log(self, conversation_id: str, idle_since: datetime.datetime) -> bool:
        last = await self._log.last_seq(conversation_id)
        if last == 0:
            return False
        entries = await self._log.after(conversation_id, last - 1, 1)
        if not entries:
            return False
        sent_at_ms = int(entries[-1].get("sent_at_ms") or 0)
        return sent_at_ms > idle_since.replace(tzinfo=datetime.UTC).timestamp() * 1000
