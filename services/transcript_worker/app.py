"""The transcript worker process: builds its dependencies once and runs the consumers
named in HABLA_WORKER_CONSUMERS (default: all), plus the idle sweeper with the closer."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import db, observability, state
from libs.common.messaging import Bus, Envelope
from libs.common.settings import Settings, SettingsError
from libs.common.sitedir import SiteDirectory
from libs.common.startup import freeze_startup_objects
from libs.common.tasks import cancel_and_wait
from libs.common.topology import QueueSpec
from services.transcript_worker.archive import ArchiveConsumer
from services.transcript_worker.closer import CloserConsumer
from services.transcript_worker.closing import Closer, IdleSweeper
from services.transcript_worker.email import EmailConsumer
from services.transcript_worker.mailer import Mailer
from services.transcript_worker.transcripts import TranscriptsConsumer

log = logging.getLogger(__name__)

CONSUMERS = ("archive", "closer", "transcripts", "email")
# On SIGTERM, handlers already running get this long to finish (an SMTP send, a
# transcript waiting for the archive) before the channels close and the broker
# redelivers what is left; under docker's default 10 s stop timeout.
STOP_GRACE_S = 8.0


class Consumer(Protocol):
    spec: QueueSpec
    manual_ack: bool

    async def consume(self, envelope: Envelope) -> None: ...


def selected_consumers(settings: Settings) -> list[str]:
    names = [n.strip() for n in settings.worker_consumers.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONSUMERS]
    if unknown or not names:
        raise SettingsError(
            f"HABLA_WORKER_CONSUMERS={settings.worker_consumers!r}: expected some of {', '.join(CONSUMERS)}"
        )
    return names


@dataclass
class Worker:
    """Everything one worker process runs; ``start``/``stop`` in that order."""

    settings: Settings
    bus: Bus
    redis: aioredis.Redis
    engine: sa.Engine
    consumers: dict[str, Consumer] = field(default_factory=dict)
    archive: ArchiveConsumer | None = None
    sweeper: IdleSweeper | None = None
    mailer: Mailer | None = None
    email: EmailConsumer | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _subscriptions: list[Any] = field(default_factory=list)
    _in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def build(cls, settings: Settings, bus: Bus, redis: aioredis.Redis, engine: sa.Engine) -> Worker:
        worker = cls(settings, bus, redis, engine)
        sites = SiteDirectory(redis, engine, settings)
        names = selected_consumers(settings)
        closer = Closer(engine, redis, bus, settings)
        if "archive" in names:
            worker.archive = ArchiveConsumer(engine, sites, settings)
            worker.consumers["archive"] = worker.archive
        if "closer" in names:
            worker.consumers["closer"] = CloserConsumer(closer, sites)
            worker.sweeper = IdleSweeper(engine, redis, closer, settings)
        if "transcripts" in names:
            worker.consumers["transcripts"] = TranscriptsConsumer(engine, redis, sites, bus, settings)
        if "email" in names:
            worker.mailer = Mailer(settings)
            worker.email = EmailConsumer(engine, redis, sites, worker.mailer, settings)
            worker.consumers["email"] = worker.email
        return worker

    async def start(self) -> None:
        await self.bus.declare_topology()
        if self.archive is not None:
            self.archive.start()
        if self.email is not None:
            self.email.start()
        for name, consumer in self.consumers.items():
            # Settled here rather than by the bus (manual=True), so the ack counts as
            # part of the running handler that a graceful stop waits for.
            subscription = await self.bus.consume(
                consumer.spec,
                self._tracked(consumer.consume, ack=not consumer.manual_ack),
                manual=True,
                prefetch=getattr(consumer, "prefetch", None),
                batch_acks=getattr(consumer, "batch_acks", False),
            )
            self._subscriptions.append(subscription)
            log.info("consuming", extra={"consumer": name, "queue": consumer.spec.name})
        if self.sweeper is not None:
            self._tasks.append(asyncio.create_task(self.sweeper.run(), name="idle-sweeper"))

    def _tracked(
        self, handler: Callable[[Envelope], Awaitable[None]], *, ack: bool
    ) -> Callable[[Envelope], Awaitable[None]]:
        """Count running handlers (acknowledging for those that do not settle
        themselves), so a graceful stop can wait for them."""

        async def run(envelope: Envelope) -> None:
            self._in_flight += 1
            self._idle.clear()
            try:
                await handler(envelope)
                if ack:
                    await envelope.ack()
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()

        return run

    async def stop(self) -> None:
        """Graceful: no new deliveries, running handlers finish, the archive commits and
        acknowledges its last batch, then the connection closes."""
        for subscription in self._subscriptions:
            await subscription.cancel()
        if self._in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("stopping with handlers still running", extra={"in_flight": self._in_flight})
        # Bounded and cancelled again while running: a task stopped while a client
        # connects can lose its cancellation (libs.common.tasks) and would hang stop().
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self.archive is not None:
            await self.archive.stop()  # last batch committed and acknowledged
        if self.email is not None:
            await self.email.stop()  # last batch sent and settled
        if self.mailer is not None:
            await self.mailer.close()
        await self.bus.close()

    def checks(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        async def mysql() -> None:
            await asyncio.to_thread(_ping_mysql, self.engine)

        async def archive() -> None:
            if self.archive is not None and self.archive.batcher.failures > 0:
                raise RuntimeError(f"archive batch failing ({self.archive.batcher.failures} attempts)")

        return {"rabbitmq": self.bus.ping, "redis": self.redis.ping, "mysql": mysql, "archive": archive}


def _ping_mysql(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


async def run(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully."""
    engine = db.engine(settings)
    redis = state.connect(settings)
    bus = await Bus.connect(settings, "transcript_worker")
    worker = Worker.build(settings, bus, redis, engine)
    await worker.start()
    server = observability.serve(settings.ops_host, settings.worker_metrics_port, worker.checks())
    freeze_startup_objects()  # the collector's full passes skip what lives as long as the process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("transcript worker running", extra={"consumers": ",".join(worker.consumers)})
    await stop.wait()
    log.info("stopping")
    server.stop()
    await worker.stop()
    await redis.aclose()
    engine.dispose()
