"""The RabbitMQ façade: the only module that imports aio-pika.

Services publish and consume Thrift structs, never bytes:

    bus = await Bus.connect(settings, "rpc_frontend")
    await bus.declare_topology()
    await bus.publish(topology.VISITOR, f"{site}.message", chat_message)
    await bus.consume(topology.ARCHIVE, handler)

Guarantees:
* every publish is persistent and waits for the broker's confirm;
* a consumer acknowledges only after its handler returns;
* a message that does not decode, is larger than MAX_BODY_BYTES or carries an
  implausible number (``libs.common.plausible``) goes straight to the queue's
  dead-letter queue with the reason, and the consumer goes on; every queue, transient
  ones included, has a dead-letter queue;
* a publish the broker does not confirm within PUBLISH_TIMEOUT_S, or one attempted
  while the connection is down, raises ``BrokerUnavailable`` (the caller answers
  "try again" and retries with the same message id; consumers dedupe by it);
* a handler that raises ``Permanent`` dead-letters the message at once; any other
  exception retries it after each delay in HABLA_AMQP_RETRY_DELAYS_MS (a TTL'd retry
  queue that dead-letters back into the work queue), then dead-letters it.

We re-publish retries and dead letters ourselves (confirmed, then ack the original)
rather than `reject()` into a native dead-letter exchange, because a native dead letter
only says "rejected" and we want the reason, the attempt count and the source queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aio_pika
import aiormq.exceptions
import redis.exceptions
import sqlalchemy.exc
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from prometheus_client import Counter

from libs.common import amqp_cluster, codec, plausible, topology
from libs.common.ackbatch import AckBatch
from libs.common.settings import Settings
from libs.common.topology import QueueSpec

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-habla-attempt"
REASON_HEADER = "x-habla-reason"
SOURCE_HEADER = "x-habla-source-queue"

# How long a publish waits for the broker's confirm. A healthy local broker confirms
# in about a millisecond; 5 s rides out a busy disk but answers a widget (whose own
# resend timer is 8 s) before it gives up on us.
PUBLISH_TIMEOUT_S = 5.0
# A nacked publish is retried on a fresh channel (Bus._renew_channel), at most once per
# this many seconds. RabbitMQ 3.10's quorum-queue client keeps, per channel and queue,
# the node it will first ask: the queue's leader as recorded when the channel first
# published to it. A channel whose first publish to a quorum queue comes just after the
# leader's node died, before the new leader is recorded (a fraction of a second after
# the kill), asks the dead node every time and every publish to that queue is nacked,
# until that node is back (18-25 s in the netns broker-kill test) or forever if it never
# comes back; a new channel asks the new leader (tests/cluster/test_rabbit_failover.py).
RENEW_CHANNEL_AFTER_NACK_S = 1.0
# Publishes go out on up to this many channels (see PUBLISH_SPILL_AT and Bus._pick).
# aiormq serialises a channel's publishes with a lock and hands it on one event-loop
# turn at a time, and aio-pika's publish holds it until the connection's writer has
# drained the frame: one channel carries at most one publish every ~3.5 loop turns,
# whatever the broker does. In a busy process under machine load (turns of 20+ ms) that
# is ~15 publishes a second; more arriving than that wait in the lock's queue, and once
# the wait reaches PUBLISH_TIMEOUT_S every publish times out (the one at the head has
# waited its whole budget before it is written), for as long as the load lasts (a
# gateway's "did not confirm within 5 s" for 1-2 minutes while other processes published
# fine). Now written without waiting for the drain (the confirm is what we wait for), on
# 4 channels of a connection of their own (Bus._publishing), the next one taken when
# PUBLISH_SPILL_AT publishes are in flight on the ones before. 300 publishes at once from a
# loop of >= 20 ms turns, consumed by the same process: 224 of 300 timed out before; 25-78
# on 4 channels of the consumers' connection; none (all in ~2 s) on their own connection
# (tests/common/test_publish_under_load.py).
PUBLISH_CHANNELS = 4
PUBLISH_SPILL_AT = 8
# Largest message a consumer decodes. Our biggest honest message is a Transcript: a
# long chat of 2,000 lines of 2,000 characters is ~16 MB in UTF-8 at worst; anything
# larger is dead-lettered unread rather than decoded into memory.
MAX_BODY_BYTES = 16 * 1024 * 1024

PUBLISHED = Counter("habla_amqp_published_total", "Messages published and confirmed", ["exchange", "type"])
CONSUMED = Counter("habla_amqp_consumed_total", "Messages handled, by outcome", ["queue", "outcome"])


class Permanent(Exception):
    """Raised by a handler for a message that can never succeed: dead-letter it now."""


class BrokerUnavailable(ConnectionError):
    """The broker did not confirm a publish (connection down, channel closed, no
    confirm within PUBLISH_TIMEOUT_S). Nothing is known to be lost: retry the same
    message id later (HTTP 503 + Retry-After to a widget)."""


# A handler failing with one of these met an outage of our own servers (Redis, MySQL
# or RabbitMQ down or loading), not a bad message: its retries wait the outage out
# (``is_outage``). Other peers' failures (an SMTP server refusing us, which may be a
# wrong address for good) keep the retry budget and end in the dead-letter queue.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    BrokerUnavailable,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.OperationalError,
)


@dataclass
class Envelope:
    """A decoded message plus what a handler needs to know about its delivery."""

    struct: Any
    type_name: str
    message_id: str
    routing_key: str
    exchange: str
    attempt: int  # 0 on first delivery; counts our own retries
    redelivered: bool  # the broker re-sent it (a consumer died before acking)
    _message: AbstractIncomingMessage
    _consumer: _Consumer

    async def ack(self) -> None:
        await self._consumer.ack(self._message)
        CONSUMED.labels(self._consumer.spec.name, "ack").inc()

    async def retry(self, reason: str, error: BaseException | None = None) -> None:
        """Retry later. ``error`` (by default the exception being handled, as a handler
        that settles its own messages calls this from its ``except`` block) decides
        whether this is an outage, which is waited out and never dead-lettered."""
        if error is None:
            error = sys.exc_info()[1]
        await self._consumer.retry(self._message, reason, outage=is_outage(error))

    async def dead_letter(self, reason: str) -> None:
        await self._consumer.dead_letter(self._message, reason)


Handler = Callable[[Envelope], Awaitable[None]]


class Bus:
    """A robust AMQP connection for declarations and consumers, one of its own (to the
    same node) for PUBLISH_CHANNELS confirmed publishing channels."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        settings: Settings,
        publishers: Sequence[AbstractChannel] = (),
        publishing: AbstractRobustConnection | None = None,
    ) -> None:
        self.connection = connection
        # The publishers' own connection (see PUBLISH_CHANNELS): confirms are read by one
        # reader per connection, which hands each channel at most 10 frames a loop turn;
        # on the consumers' connection they waited behind the deliveries.
        self._publishing = publishing or connection
        self._channel = channel
        self._settings = settings
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumers: list[_Consumer] = []
        # Publishing channels (see PUBLISH_CHANNELS); ``channel`` carries declarations,
        # bindings and publishes made before connect's publishers are added.
        self._publishers = [_Publisher(channel) for channel in publishers or (channel,)]
        self._renewing = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()  # old channels closed a little later
        self.channels_renewed = 0

    @classmethod
    async def connect(cls, settings: Settings, name: str) -> Bus:
        """Connect with a name that shows in the broker's connection list."""
        connection = await amqp_cluster.connect(
            settings.amqp_urls,
            client_properties={"connection_name": f"habla.{name}.{settings.frontend_id}"},
        )
        # on_return_raises: an unroutable mandatory publish fails loudly instead of vanishing.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        publishing = await amqp_cluster.connect(
            settings.amqp_urls,
            start=amqp_cluster.node_index(connection),  # the same node
            client_properties={"connection_name": f"habla.{name}.{settings.frontend_id}.publish"},
        )
        try:
            publishers = [await _publishing_channel(publishing) for _ in range(PUBLISH_CHANNELS)]
        except BaseException:
            await publishing.close()
            await connection.close()
            raise
        return cls(connection, channel, settings, publishers, publishing)

    async def close(self) -> None:
        for consumer in self._consumers:
            await consumer.stop()
        for task in self._retired:
            task.cancel()
        if self._publishing is not self.connection:
            await self._publishing.close()
        await self.connection.close()

    async def ping(self) -> None:
        """Health check: the connection is open and its publishing channel restored
        (after a reconnect the channels come back a moment after the connection)."""
        for connection in (self.connection, self._publishing):
            if connection.is_closed or not connection.connected.is_set():
                raise ConnectionError("not connected to RabbitMQ")
        if self._channel.is_closed or any(p.channel.is_closed for p in self._publishers):
            raise ConnectionError("RabbitMQ channel not restored yet")

    # --- topology ----------------------------------------------------------------------
    async def declare_topology(self, queues: tuple[QueueSpec, ...] = topology.WORK_QUEUES) -> None:
        """Declare every exchange and the given queues (idempotent; safe from every service)."""
        for name in topology.EXCHANGES:
            await self._exchange(name)
        for spec in queues:
            await self.declare_queue(spec, self._channel)

    async def _exchange(self, name: str, channel: AbstractChannel | None = None) -> AbstractExchange:
        if channel is None and name in self._exchanges:
            return self._exchanges[name]
        if name == "":
            exchange = (channel or self._channel).default_exchange
        else:
            exchange = await (channel or self._channel).declare_exchange(
                name, aio_pika.ExchangeType(topology.EXCHANGES[name].value), durable=True
            )
        if channel is None:
            self._exchanges[name] = exchange
        return exchange

    async def declare_queue(self, spec: QueueSpec, channel: AbstractChannel | None = None) -> AbstractQueue:
        """Declare ``spec`` with its bindings, retry queues and dead-letter queue."""
        channel = channel or self._channel
        if spec.durable:
            arguments: dict[str, Any] = {
                "x-queue-type": "quorum",
                "x-delivery-limit": topology.DELIVERY_LIMIT,
                # Past the delivery limit RabbitMQ dead-letters natively into the same
                # dead-letter queue our own dead letters go to.
                "x-dead-letter-exchange": topology.DEAD,
                "x-dead-letter-routing-key": spec.name,
                **spec.extra_arguments,
            }
        else:
            arguments = {**spec.extra_arguments}
            if spec.expires_ms:
                arguments["x-expires"] = spec.expires_ms
        queue = await channel.declare_queue(spec.name, durable=spec.durable, arguments=arguments)
        for exchange, key in spec.bindings:
            await queue.bind(await self._exchange(exchange, channel), routing_key=key)
        # Every queue has a dead-letter queue. A transient per-instance queue shares one
        # durable dead-letter queue with its kind (it outlives the instance).
        dead = await channel.declare_queue(spec.dead_letter_queue, durable=True, arguments=self._replicated())
        await dead.bind(await self._exchange(topology.DEAD, channel), routing_key=spec.dead_letter_key)
        if spec.retry:
            for delay in self._settings.retry_delays_ms:
                # A parked copy expires after `delay` and RabbitMQ dead-letters it
                # through the default exchange straight back into the work queue.
                await channel.declare_queue(
                    spec.retry_queue(delay),
                    durable=True,
                    arguments={
                        "x-message-ttl": delay,
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": spec.name,
                        **self._replicated(retry=True),
                    },
                )
        return queue

    def _replicated(self, *, retry: bool = False) -> dict[str, Any]:
        """Arguments that make a retry or dead-letter queue a quorum queue (HABLA_AMQP_QUORUM)."""
        if not self._settings.amqp_quorum:
            return {}
        if not retry:
            return {"x-queue-type": "quorum"}
        # A quorum queue dead-letters at most once by default: a parked retry expiring
        # while the work queue has no leader would be dropped. at-least-once keeps it
        # until the work queue confirms it (RabbitMQ requires reject-publish with it).
        return {"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}

    # --- publishing --------------------------------------------------------------------
    async def publish(
        self,
        exchange: str,
        routing_key: str,
        struct: Any,
        *,
        message_id: str | None = None,
        mandatory: bool = True,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Publish persistently and wait for the broker's confirm. Returns the message id.

        mandatory=True turns "no queue is bound for this key" into an error instead of
        a silent drop; pass False where nobody listening is normal (a departed frontend).
        """
        return await self._publish(exchange, routing_key, struct, message_id, mandatory, headers, self._pick())

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        struct: Any,
        message_id: str | None,
        mandatory: bool,
        headers: dict[str, Any] | None,
        publisher: _Publisher,
    ) -> str:
        message_id = message_id or _struct_id(struct)
        message = aio_pika.Message(
            codec.encode(struct),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type=codec.CONTENT_TYPE,
            type=codec.type_name(struct),
            message_id=message_id,
            timestamp=datetime.datetime.now(datetime.UTC),
            headers=headers or {},
        )
        await self._confirmed(exchange, routing_key, message, mandatory, publisher)
        PUBLISHED.labels(exchange, message.type).inc()
        return message_id

    async def publish_all(self, exchange: str, messages: Sequence[tuple[str, Any]]) -> None:
        """Publish each (routing key, struct), in this order, with their confirms in flight
        together: one wait for the broker instead of one per message. Returns once every
        one is confirmed; raises the first failure (BrokerUnavailable …) once all settled,
        so the caller retries the lot (consumers dedupe by message id)."""
        if len(messages) == 1:
            await self.publish(exchange, *messages[0])
            return
        # gather starts the publishes in order, and one channel writes them in the order
        # they ask (aiormq's channel lock is first come, first served).
        publisher = self._pick()
        results = await asyncio.gather(
            *(self._publish(exchange, key, struct, None, True, None, publisher) for key, struct in messages),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _pick(self) -> _Publisher:
        # The first channel until it has PUBLISH_SPILL_AT in flight: publishes started
        # one after another go out on one channel, in that order, as they always did,
        # unless a burst would queue them behind its lock.
        for publisher in self._publishers:
            if publisher.in_flight < PUBLISH_SPILL_AT:
                return publisher
        return min(self._publishers, key=lambda p: p.in_flight)

    async def _confirmed(
        self,
        exchange: str,
        routing_key: str,
        message: aio_pika.Message,
        mandatory: bool,
        publisher: _Publisher | None = None,
    ) -> None:
        publisher = publisher or self._pick()
        channel = publisher.channel
        publisher.in_flight += 1
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._exchange(exchange)  # declared once, on the declaring channel
                if channel.is_closed:
                    raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
                underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                # wait=False: the channel's lock is not held until the writer drained the
                # frame (see PUBLISH_CHANNELS); the broker's confirm is still awaited.
                await underlay.basic_publish(
                    message.body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=message.properties,
                    mandatory=mandatory,
                    wait=False,
                )
        except aiormq.exceptions.PublishError:
            raise  # returned as unroutable: a topology bug, not an outage
        except aiormq.exceptions.DeliveryError as exc:
            # A nack: the retry goes out on a fresh channel (see RENEW_CHANNEL_AFTER_NACK_S).
            await self._renew_channel(publisher, channel, "nacked")
            raise BrokerUnavailable("RabbitMQ refused the publish (nack)") from exc
        except TimeoutError as exc:
            # Whatever held this channel up (a confirm the broker never sent, a lock left
            # behind), the next publishes of this slot go out on a fresh one; renewed in
            # the background, so the caller hears of the timeout now.
            self._in_background(self._renew_channel(publisher, channel, "not confirmed in time"))
            raise BrokerUnavailable(f"RabbitMQ did not confirm within {PUBLISH_TIMEOUT_S:g} s") from exc
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError) as exc:
            # A closed channel or connection: the robust connection reconnects
            # in the background; the caller retries with the same message id.
            raise BrokerUnavailable(f"RabbitMQ unavailable: {exc.__class__.__name__}: {exc}") from exc
        finally:
            publisher.in_flight -= 1

    async def _renew_channel(self, publisher: _Publisher, failed: AbstractChannel, why: str) -> None:
        """Publish on a new channel in ``publisher``'s place from now on, unless ``failed``
        was replaced already or the slot's last renewal is under RENEW_CHANNEL_AFTER_NACK_S
        old. The old channel is closed once the publishes still waiting on it have had
        their PUBLISH_TIMEOUT_S. Exchanges, queues and bindings are durable and declared
        on the declaring channel: a new channel needs none of them declared again."""
        async with self._renewing:
            if (
                publisher.channel is not failed
                or time.monotonic() - publisher.renewed_at < RENEW_CHANNEL_AFTER_NACK_S
                or self._publishing.is_closed
                or not self._publishing.connected.is_set()  # its recovery restores the old one
            ):
                return
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    fresh = await _publishing_channel(self._publishing)
            except Exception as exc:  # the connection is down: its recovery restores the old one
                log.warning("opening a new publishing channel failed", extra={"error": repr(exc)})
                return
            publisher.channel, publisher.renewed_at = fresh, time.monotonic()
            self.channels_renewed += 1
        log.warning("a publish was %s: publishing on a new channel", why)

        async def retire() -> None:
            await asyncio.sleep(PUBLISH_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await failed.close()

        self._in_background(retire())

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._retired.add(task)  # referenced until done (the loop keeps tasks weakly)
        task.add_done_callback(self._retired.discard)

    async def publish_raw(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool = False
    ) -> None:
        """Republish bytes as they are (retries, dead letters, tests of poison messages)."""
        await self._confirmed(exchange, routing_key, message, mandatory)

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Bind a declared queue (idempotent)."""
        declared = await self._channel.get_queue(queue, ensure=False)
        await declared.bind(await self._exchange(exchange), routing_key=routing_key)

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Remove a binding (unbinding one that does not exist is fine)."""
        declared = await self._channel.get_queue(queue, ensure=False)
        await declared.unbind(await self._exchange(exchange), routing_key=routing_key)

    # --- consuming ---------------------------------------------------------------------
    async def consume(
        self,
        spec: QueueSpec,
        handler: Handler,
        *,
        manual: bool = False,
        prefetch: int | None = None,
        batch_acks: bool = False,
    ) -> _Consumer:
        """Start consuming ``spec`` with ``handler`` on a channel of its own.

        manual=True leaves settling to the handler (``envelope.ack()`` later), for
        consumers that acknowledge a whole batch after one database commit.
        batch_acks=True: acknowledgements asked for in one event-loop turn go out
        together (``AckBatch``), for consumers that settle many messages at once.
        """
        channel = await self.connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=prefetch or self._settings.amqp_prefetch)
        queue = await self.declare_queue(spec, channel)
        delays = self._settings.retry_delays_ms if spec.retry else ()
        consumer = _Consumer(self, spec, channel, queue, handler, manual, delays, batch_acks)
        await consumer.start()
        self._consumers.append(consumer)
        return consumer


async def _publishing_channel(connection: AbstractRobustConnection) -> AbstractChannel:
    # on_return_raises: an unroutable mandatory publish fails loudly instead of vanishing.
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


class _Publisher:
    """One of the Bus's publishing channels (replaced after a nack or a timeout)."""

    __slots__ = ("channel", "in_flight", "renewed_at")

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self.in_flight = 0
        self.renewed_at = -math.inf


def _struct_id(struct: Any) -> str:
    # Reuse the struct's own idempotency key when it has one, so AMQP message_id and
    # the domain id agree (a consumer may dedupe on either).
    for attr in ("message_id", "action_id"):
        value = getattr(struct, attr, None)
        if value:
            return str(value)
    return uuid.uuid4().hex


class _Consumer:
    def __init__(
        self,
        bus: Bus,
        spec: QueueSpec,
        channel: AbstractChannel,
        queue: AbstractQueue,
        handler: Handler,
        manual: bool,
        retry_delays_ms: tuple[int, ...],
        batch_acks: bool = False,
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.channel = channel
        self.queue = queue
        self.handler = handler
        self.manual = manual
        self._acks = AckBatch() if batch_acks else None
        self.retry_delays_ms = retry_delays_ms
        self._tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._tag = await self.queue.consume(self._on_message, no_ack=False)

    async def cancel(self) -> None:
        """Stop new deliveries but keep the channel open, so handlers still running can
        settle their messages (a graceful stop); ``stop`` closes the channel afterwards."""
        if self._tag is not None and not self.channel.is_closed:
            await self.queue.cancel(self._tag)
        self._tag = None

    async def stop(self) -> None:
        if self._tag is not None and not self.channel.is_closed:
            await self.queue.cancel(self._tag)
        self._tag = None
        if not self.channel.is_closed:
            await self.channel.close()

    async def ack(self, message: AbstractIncomingMessage) -> None:
        """Every acknowledgement of this consumer passes here (handler, retry, dead letter)."""
        if self._acks is None:
            await message.ack()
        else:
            await self._acks.ack(message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._acks is not None:
            self._acks.delivered(message)  # first, in delivery order (see AckBatch)
        # Nothing here may raise before the message is settled: an exception would
        # leave it unacknowledged until the channel closes, and a prefetch-full of
        # such messages stalls the consumer.
        try:
            envelope = self._envelope(message)
        except _Poison as exc:
            log.warning("message dead-lettered unread", extra={"queue": self.spec.name, "reason": str(exc)})
            await self.dead_letter(message, str(exc))
            return
        try:
            await self.handler(envelope)
        except Permanent as exc:
            log.warning(
                "message rejected", extra={"queue": self.spec.name, "id": envelope.message_id, "reason": str(exc)}
            )
            await self.dead_letter(message, f"rejected: {exc}")
            return
        except Exception as exc:  # any handler failure is retried, then dead-lettered
            log.exception("handler failed", extra={"queue": self.spec.name, "id": envelope.message_id})
            await self.retry(message, f"{exc.__class__.__name__}: {exc}", outage=is_outage(exc))
            return
        if not self.manual:
            await envelope.ack()

    def _envelope(self, message: AbstractIncomingMessage) -> Envelope:
        if len(message.body) > MAX_BODY_BYTES:
            raise _Poison(f"oversized: {len(message.body)} bytes; at most {MAX_BODY_BYTES}")
        type_name = message.type if isinstance(message.type, str) else None
        if self.spec.accepts and type_name not in self.spec.accepts:
            shown = repr(type_name[:64]) if type_name else "none"
            raise _Poison(f"wrong type: {shown}; {self.spec.name} takes {', '.join(sorted(self.spec.accepts))}")
        try:
            struct = codec.decode(type_name, message.body)
        except codec.DecodeError as exc:
            raise _Poison(f"undecodable: {exc}") from None
        try:
            plausible.check(struct)
        except plausible.Implausible as exc:
            raise _Poison(f"implausible: {exc}") from None
        return Envelope(
            struct=struct,
            type_name=str(type_name),
            message_id=_text(message.message_id),
            routing_key=_text(message.routing_key),
            exchange=_text(message.exchange),
            attempt=plausible.header_int(message.headers, ATTEMPT_HEADER),
            redelivered=bool(message.redelivered),
            _message=message,
            _consumer=self,
        )

    async def retry(self, message: AbstractIncomingMessage, reason: str, *, outage: bool = False) -> None:
        delays = self.retry_delays_ms
        attempt = plausible.header_int(message.headers, ATTEMPT_HEADER)
        if outage and delays:
            # Redis, MySQL or RabbitMQ down is not the message's fault: wait it out at
            # the longest delay as long as it lasts, and never dead-letter for it (a
            # 10 s Redis outage used to exhaust short retry delays and drop a line).
            attempt = min(attempt, len(delays) - 1)
        elif attempt >= len(delays):
            await self.dead_letter(message, f"gave up after {attempt + 1} attempts: {reason}")
            return
        copy = _copy(
            message,
            {
                ATTEMPT_HEADER: min(attempt + 1, len(delays) - 1) if outage else attempt + 1,
                REASON_HEADER: reason[:1000],
            },
        )
        try:
            await self.bus.publish_raw("", self.spec.retry_queue(delays[attempt]), copy)
        except BrokerUnavailable as exc:
            await self._give_back(message, exc)
            return
        await self.ack(message)
        CONSUMED.labels(self.spec.name, "retry").inc()

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        copy = _copy(message, {REASON_HEADER: reason[:1000], SOURCE_HEADER: self.spec.name})
        # mandatory: a dead letter nobody would keep must fail loudly, not vanish.
        try:
            await self.bus.publish_raw(topology.DEAD, self.spec.name, copy, mandatory=True)
        except BrokerUnavailable as exc:
            await self._give_back(message, exc)
            return
        await self.ack(message)
        CONSUMED.labels(self.spec.name, "dead").inc()

    async def _give_back(self, message: AbstractIncomingMessage, exc: BrokerUnavailable) -> None:
        """The retry or dead-letter copy was not confirmed (RabbitMQ slow or going away):
        requeue the message, to be handled again, rather than hold it unacknowledged (a
        prefetch-full of those stalls the consumer: the poison test saw a loaded broker
        confirm late and the worker stop). Here, not in _on_message, so the settling of
        consumers that settle their own messages (envelope.retry / dead_letter) is
        covered too. RabbitMQ's delivery limit still bounds the redeliveries."""
        log.warning("message requeued", extra={"queue": self.spec.name, "reason": str(exc)})
        with contextlib.suppress(Exception):  # a closed channel requeues it anyway
            await message.nack(requeue=True)
        if self._acks is not None:  # after the nack: no multiple ack may cover it first
            self._acks.forget(message)
        CONSUMED.labels(self.spec.name, "requeued").inc()


def is_outage(error: BaseException | None) -> bool:
    """Is ``error`` (or what caused it) a server being unreachable for a while?"""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, OUTAGE_ERRORS):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


class _Poison(Exception):
    """A message no handler should see (the text is the dead-letter reason)."""


def _text(value: Any, limit: int = 256) -> str:
    # AMQP short strings are at most 255 bytes; never trust a peer's type either.
    return value[:limit] if isinstance(value, str) else ""


def _copy(message: AbstractIncomingMessage, extra_headers: dict[str, Any]) -> aio_pika.Message:
    return aio_pika.Message(
        message.body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type=message.content_type,
        type=message.type,
        message_id=message.message_id,
        timestamp=message.timestamp,
        headers={**(message.headers or {}), **extra_headers},
    )
