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
from dataclasses import dataclass, field
from typing import Any, Protocol

from libs.common.messaging import Envelope
from services.im_gateway.desk import Desk
from services.im_gateway.lanes import Lanes
from services.im_gateway.outbox import XmppUnavailable
from services.im_gateway.routing import Conversation

log = logging.getLogger(__name__)

# While XMPP is down, re-check this often (reconnect backoff starts at 0.5 s).
STREAM_WAIT_S = 0.2
# A stopping consumer checks this often whether its in-flight messages are settled.
SETTLE_CHECK_S = 0.02


class Stream(Protocol):
    """The part of the component a consumer needs (services.im_gateway.component)."""

    ready: asyncio.Event

    def ticket(self) -> tuple[int, int]: ...

    async def confirm(self, ticket: tuple[int, int] | None = None) -> None: ...


@dataclass(eq=False)
class Written:
    """A message whose stanzas are written but not yet confirmed by the server."""

    envelope: Envelope
    ticket: tuple[int, int]
    early: Any = None  # what the prefetch did for it early (``queue_early``), if anything
    rewritten: asyncio.Event = field(default_factory=asyncio.Event)


# Conversation id -> (conversation, visitor blocked), as Routing.for_line answers.
Routes = dict[str, tuple[Conversation | None, bool]]


@dataclass
class Prefetched:
    """What a batch's messages need from Redis, read for all of them at once."""

    seen: dict[str, bool]  # message id -> already delivered (services.im_gateway.dedupe)
    routes: Routes
    # Message id -> the answer of what ``queue_early`` queued for it (its Redis work,
    # done with the batch's reads), handed to ``consume``.
    early: dict[str, Any] = field(default_factory=dict)


def _lane_key(envelope: Envelope) -> str:
    return str(getattr(envelope.struct, "visitor_id", "") or "")


class Unhandled(Exception):
    """A message type this queue should never carry: dead-letter it."""


# A visitor's messages read from Redis together (one round trip) at most; the prefetch
# window (HABLA_AMQP_PREFETCH, 200) bounds it too.
BATCH_MAX = 50

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
        # Per lane key: messages written, not yet confirmed, in the order written.
        self._unconfirmed: dict[str, list[Written]] = {}
        self._confirming: set[asyncio.Task[None]] = set()
        self._arriving = 0  # deliveries on their way into a lane
        # Per lane key: messages received while the lane was busy, settled together.
        self._waiting: dict[str, list[Envelope]] = {}

    async def receive(self, envelope: Envelope) -> None:
        """Join the visitor's batch still waiting for its lane, else start one."""
        key = _lane_key(envelope)
        batch = self._waiting.get(key)
        if batch is not None and len(batch) < BATCH_MAX:
            batch.append(envelope)  # its lane job is queued or on its way (_arriving)
            return
        batch = [envelope]
        self._waiting[key] = batch
        self._arriving += 1
        try:
            await self._lanes.submit(key, lambda: self._settle_batch(key, batch))
        finally:
            self._arriving -= 1

    @property
    def idle(self) -> bool:
        return not self._arriving and not self._lanes.busy and not self._confirming

    async def settle(self, within: float) -> None:
        """After the consumer was cancelled (no new deliveries): wait, at most
        ``within`` seconds, until every message already delivered is written, confirmed
        by the server and acknowledged -- a graceful stop or handover then leaves nothing
        for the next owner to send again. Idle twice in a row, SETTLE_CHECK_S apart:
        deliveries that crossed the cancel reach the handler just after it."""
        deadline = asyncio.get_running_loop().time() + within
        quiet = 0
        while quiet < 2 and asyncio.get_running_loop().time() < deadline:
            quiet = quiet + 1 if self.idle else 0
            await asyncio.sleep(SETTLE_CHECK_S)
        if not self.idle:
            log.warning("stopping: lines still in flight are left to be redelivered")

    async def _settle_batch(self, key: str, batch: list[Envelope]) -> None:
        """A visitor's messages that arrived while their lane was busy: what they need
        from Redis (the delivered marks, the conversations) is read in one round trip
        for all, then each is settled in order."""
        if self._waiting.get(key) is batch:
            del self._waiting[key]  # later arrivals start the next batch
        prefetched = await self._prefetch(batch)
        early = prefetched.early if prefetched is not None else {}
        for envelope in batch:
            if prefetched is not None and not self._ready.is_set():
                # The stream went down: read afresh once it is back. What the prefetch
                # did early stays: it is done in Redis (doing it again would repeat it).
                prefetched = None
            await self._settle(envelope, prefetched, early.get(envelope.message_id))

    async def _prefetch(self, batch: list[Envelope]) -> Prefetched | None:
        """The batch's delivered marks and conversations (``lookups``), in one round
        trip; None if Redis did not answer (each message then reads its own)."""
        wanted = (self.lookups(e.type_name, e.struct) for e in batch)
        lookups = list(dict.fromkeys(w for w in wanted if w[0]))  # each conversation once, in order
        try:
            async with self.desk.routing.pipeline() as pipe:
                recorded = [self.queue_early(pipe, envelope) for envelope in batch]
                for envelope, queued in zip(batch, recorded, strict=True):
                    if not queued:
                        self.desk.delivered.queue_seen(pipe, envelope.message_id)
                for conversation_id, site_id, visitor_id in lookups:
                    self.desk.routing.queue_for_line(pipe, conversation_id, site_id, visitor_id)
                results = await pipe.execute()
        except Exception:
            log.warning("prefetching a batch failed; each message reads its own", exc_info=True)
            return None
        seen: dict[str, bool] = {}
        early: dict[str, Any] = {}
        answers = iter(results)
        for envelope, queued in zip(batch, recorded, strict=True):
            if queued:  # the early answers first, in batch order (see above)
                answer = next(answers)
                if answer is None:
                    seen[envelope.message_id] = True  # marked delivered: nothing was done
                else:
                    early[envelope.message_id] = answer
        for envelope, queued in zip(batch, recorded, strict=True):
            if not queued:
                seen[envelope.message_id] = bool(next(answers))
        rest = list(answers)
        routes = {}
        for i, (conversation_id, _, _) in enumerate(lookups):
            routes[conversation_id] = self.desk.routing.from_for_line(conversation_id, rest[3 * i : 3 * i + 3])
        return Prefetched(seen, routes, early)

    def lookups(self, type_name: str, struct: Any) -> tuple[str, str, str]:
        """(conversation, site, visitor) whose routing a message needs, ("", "", "") for none."""
        return "", "", ""

    def queue_early(self, pipe: Any, envelope: Envelope) -> bool:
        """For a message whose Redis work needs nothing decided first: queue one command
        on ``pipe`` that, unless the message is marked delivered, does that work and reads
        what the handler needs (answering None if it is marked: the message is then
        acknowledged as seen). True if queued. The answer goes to ``consume`` as
        ``early``; the rest is as for any message: stanzas written, the barrier, the
        mark, the ack. A message handled again (a retry, a redelivery before its mark)
        does its work again, as it did when the handler did it."""
        return False

    async def close(self) -> None:
        await self._lanes.close()
        for task in list(self._confirming):
            task.cancel()
        if self._confirming:
            await asyncio.wait(set(self._confirming), timeout=1.0)

    async def _settle(self, envelope: Envelope, prefetched: Prefetched | None = None, early: Any = None) -> None:
        """In the visitor's lane: write the message's stanzas, then move on to the
        next one while a task of its own waits for the server's confirmation (the
        barrier) and acknowledges. A visitor's lines are thus written back to back,
        one confirmation covering many, instead of one round trip each."""
        key = _lane_key(envelope)
        while True:
            await self._ready.wait()
            try:
                await self._rewrite_lost(key)
                if early is None:  # (else the prefetch found it unmarked: not seen)
                    seen = prefetched.seen.get(envelope.message_id) if prefetched else None
                    if seen is None:
                        seen = await self.desk.delivered.seen(envelope.message_id)
                    if seen:
                        await envelope.ack()
                        return
                await self.desk.delivered.ready()
                await self.consume(
                    envelope.type_name, envelope.struct, prefetched.routes if prefetched else None, early
                )
            except XmppUnavailable:
                prefetched = None  # stale by the time the stream is back
                await asyncio.sleep(STREAM_WAIT_S)
                continue
            except Unhandled as exc:
                await envelope.dead_letter(str(exc))
                return
            except Exception as exc:  # retried with backoff by the bus, then dead-lettered
                log.exception("message handling failed", extra={"id": envelope.message_id})
                await envelope.retry(f"{exc.__class__.__name__}: {exc}")
                return
            written = Written(envelope, self._stream.ticket(), early)
            self._unconfirmed.setdefault(key, []).append(written)
            task = asyncio.create_task(self._confirm(key, written))
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)
            return

    async def _rewrite_lost(self, key: str) -> None:
        """Write again, in order, what this visitor's lane wrote on a stream that was
        lost before the server confirmed it: before anything newer, so the operator
        sees the lines in the order written."""
        current = self._stream.ticket()[0]
        for written in list(self._unconfirmed.get(key, ())):
            if written.ticket[0] != current:
                await self.consume(written.envelope.type_name, written.envelope.struct, early=written.early)
                written.ticket = self._stream.ticket()
                written.rewritten.set()

    async def _confirm(self, key: str, written: Written) -> None:
        try:
            while True:
                ticket = written.ticket
                try:
                    await self._stream.confirm(ticket)
                    break
                except XmppUnavailable:
                    # Lost with the stream: the lane writes it again once the stream is
                    # back (ahead of the visitor's newer lines), then we wait again --
                    # unless the lane already did (it rewrites before anything newer).
                    await self._ready.wait()
                    if written.ticket == ticket:
                        written.rewritten.clear()
                        await self._lanes.submit(key, lambda: self._rewrite_job(key))
                        await written.rewritten.wait()
            await self.desk.delivered.mark_now(written.envelope.message_id)
            await written.envelope.ack()
        except Exception:  # unacknowledged: RabbitMQ redelivers it when the channel closes
            log.exception("confirming a message failed", extra={"id": written.envelope.message_id})
        finally:
            pending = self._unconfirmed.get(key, [])
            if written in pending:
                pending.remove(written)
            if not pending:
                self._unconfirmed.pop(key, None)

    async def _rewrite_job(self, key: str) -> None:
        while True:
            await self._ready.wait()
            try:
                await self._rewrite_lost(key)
                return
            except XmppUnavailable:
                await asyncio.sleep(STREAM_WAIT_S)

    async def consume(self, type_name: str, struct: Any, routes: Routes | None = None, early: Any = None) -> None:
        """Handle one message; ``routes``: conversations as read for its batch (``lookups``);
        ``early``: the answer of what ``queue_early`` queued for it, if it was."""
        raise NotImplementedError
