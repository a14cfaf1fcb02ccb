"""The gateway assembled: dependencies in, a lifecycle out (start, run, stop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common.db.history import seq_floor
from libs.common.messaging import Bus
from libs.common.observability import NotReady
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import OperatorPresence
from libs.common.state.sessions import VisitorSessions
from libs.common.tasks import cancel_and_wait
from services.im_gateway import disco, forceaway, metrics
from services.im_gateway.availability import Availability
from services.im_gateway.bindings import RESYNC_S, SiteBindings
from services.im_gateway.coalescer import PresenceCoalescer
from services.im_gateway.component import GatewayComponent, on
from services.im_gateway.consumers.conversation import ConversationConsumer
from services.im_gateway.consumers.visitor import VisitorConsumer
from services.im_gateway.dedupe import Delivered
from services.im_gateway.desk import Desk
from services.im_gateway.events import Events
from services.im_gateway.follows import Follows
from services.im_gateway.inbound import Inbound
from services.im_gateway.lease import DomainLease
from services.im_gateway.operators import OperatorDirectory
from services.im_gateway.partitions import Seats
from services.im_gateway.privilege import Privileges
from services.im_gateway.rebalance import HANDOFF_POLL_S
from services.im_gateway.roster import Roster
from services.im_gateway.rosters import Rosters
from services.im_gateway.routing import Routing
from services.im_gateway.sitebot import SiteBot
from services.im_gateway.takeover_notice import TakeoverNotice
from services.im_gateway.visitors import VisitorNames, VisitorPages

log = logging.getLogger(__name__)

# Each step of a graceful stop gets this long: docker stops a container 10 s after
# SIGTERM, and nothing is lost by giving up (RabbitMQ redelivers, leases expire).
STOP_STEP_S = 3.0
# Stopping: how long the lines in hand get to be finished and receipted before the
# stream closes. Where the XMPP server holds the domain's stanzas for the next owner
# (mod_habla_hold) nothing new arrives meanwhile; elsewhere new lines are refused with
# an error (short: lines still queued after it are stored once the stream has closed,
# only their receipt is lost, and until the next owner is in the server bounces them).
QUIESCE_S = 1.0
# A standby checks the lease (and, once it is vacant, tries the component connection)
# this often: a takeover costs at most this after the dead holder's lease turns stale
# (services.im_gateway.lease.DomainLease.vacant), plus a handshake (~10 ms on loopback).
STANDBY_RETRY_S = 1.0
# One claim attempt: a handshake takes milliseconds; a server that does not answer
# within this long is treated as unreachable for this attempt.
CLAIM_WITHIN_S = 5.0


class Standby(NotReady):
    """Health: this gateway is alive but another one serves the domain (/healthz shows
    the text as is, "standby: …", which docker's probe accepts: services.im_gateway.healthcheck)."""


class Gateway:
    def __init__(
        self, settings: Settings, bus: Bus, redis: aioredis.Redis, engine: sa.Engine, seats: Seats | None = None
    ) -> None:
        self.settings = settings
        self.seats = seats or Seats()  # shared by the partitions one process serves
        self.bus = bus
        self.redis = redis
        self.component = GatewayComponent(
            settings.xmpp_component_domain,
            settings.xmpp_component_secret,
            settings.xmpp_component_host,
            settings.xmpp_component_port,
            server=settings.xmpp_domain,
        )
        self.sitedir = SiteDirectory(redis, engine, settings)
        self.lease = DomainLease(redis, settings)
        self.bindings = SiteBindings(bus, engine, settings)
        operators = OperatorDirectory(self.sitedir, engine)
        events = Events(bus)
        self.desk = Desk(
            settings=settings,
            outbox=self.component,
            sessions=VisitorSessions(redis, settings),
            # The floor: numbering never goes back after Redis reloads an older copy.
            log=ConversationLog(redis, settings, seq_floor(engine)),
            names=VisitorNames(redis, settings),
            pages=VisitorPages(redis, settings),
            operators=operators,
            availability=Availability(
                OperatorPresence(redis, settings), events, operators, settings.presence_heartbeat_s
            ),
            routing=Routing(redis, settings),
            coalescer=PresenceCoalescer(
                self.component, settings.gateway_presence_interval_ms / 1000, settings.gateway_presence_ceiling_per_s
            ),
            events=events,
            delivered=Delivered(redis, settings),
            follows=Follows(redis, settings),
        )
        disco.install(self.component, self.desk)
        self.bot = SiteBot(self.desk)
        self.roster = Roster(self.desk, self.bot)
        self.privileges = Privileges(self.component)
        self.desk.roster_managed = self.privileges.can_write
        self.rosters = Rosters(self.desk, redis, self.component, self.privileges, self.sitedir, self.roster, self.bot)
        self.bot.after_refresh = self.rosters.refresh_site
        self.inbound = Inbound(self.component, self.desk, self.roster, self.bot, self.rosters)
        self.visitor_consumer = VisitorConsumer(self.desk, self.component)
        self.conversation_consumer = ConversationConsumer(self.desk, self.component)
        self.takeover_notice = TakeoverNotice(
            redis, settings, self.desk, self.component, self.lease.token, caught_up=self.inbound.caught_up
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._consumers: list[Any] = []
        self.active = False
        self.standing_by = False  # refused by the XMPP server: another gateway is active
        self.lease_lost = False  # set when another instance took the domain over
        self._roster_sync: asyncio.Task[Any] | None = None
        self._vacant_since: float | None = None
        self._seated = False
        self._owned_since = 0.0  # CLOCK_MONOTONIC when our stream was admitted
        self._handing = asyncio.Event()
        self.handed_over = False  # run() ended because hand_over() asked it to
        self.receiver: str | None = None  # the member the domain is promised to on release
        on(self.component, "session_start", self._on_session_start)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def start(self) -> None:
        """Stand by until the component domain is ours, take the lease, start consuming."""
        await self.bus.declare_topology()
        # Bindings are the broker's (shared by active and standby): made before standing
        # by, so a takeover only binds what changed meanwhile (one round trip per site
        # and key would otherwise add seconds per thousand sites to the takeover).
        await self.bindings.declare()
        await self.bindings.resync()
        await self._claim_domain()
        await self.lease.take()
        self.active = True
        served = await self.bindings.resync()
        await self.desk.operators.load_all(served)
        # Taken from a gateway that died: its operators learn to resend unreceipted lines.
        self._spawn(self.takeover_notice.run(served), "takeover-notice")
        self._spawn(self._watch_sites(), "site-changes")
        self._spawn(self._rebind(), "site-rebind")
        self._spawn(self.inbound.run(), "inbound")
        self._spawn(self.desk.coalescer.run(), "coalescer")
        self._spawn(self.bot.run(), "site-bot")
        self._spawn(self.rosters.pushes.run(), "roster-pushes")
        self._spawn(self._heartbeat(), "heartbeat")
        self._spawn(forceaway.watch(self.desk), "force-away")
        self._consumers.append(
            # One barrier ping confirms many lines at once: their acks go out together.
            await self.bus.consume(
                self.bindings.queues["visitor"], self.visitor_consumer.receive, manual=True, batch_acks=True
            )
        )
        self._consumers.append(
            await self.bus.consume(
                self.bindings.queues["conversation"], self.conversation_consumer.receive, manual=True
            )
        )
        if self.component.ready.is_set():
            self._on_session_start(None)  # the stream came up before the operators were loaded

    async def _claim_domain(self) -> None:
        """About once a second: if the lease's holder has stopped renewing it (or there
        is none), try the component connection; the XMPP server lets us in only once
        the old holder's stream is gone (Prosody admits one connection per component
        domain). A dead gateway misses its renewals (every second) and its stream
        closes with its process, so a standby takes over within a few seconds, not a
        lease TTL; a live one is never displaced, also on servers (ejabberd) that
        would admit a second connection."""
        resynced = time.monotonic()
        while not await self._try_claim():
            if time.monotonic() - resynced > RESYNC_S:  # keep the standby's view of the bindings fresh
                resynced = time.monotonic()
                try:
                    await self.bindings.resync()
                except Exception:
                    log.exception("site rebind failed while standing by")
            if not self.standing_by:
                log.info(
                    "another gateway serves this component domain; standing by",
                    extra={"domain": self.settings.xmpp_component_domain, "retry_s": STANDBY_RETRY_S},
                )
                self.standing_by = True
            # Promised to us by a member handing it over: claim the moment it is released.
            await asyncio.sleep(HANDOFF_POLL_S if self.lease.promised else STANDBY_RETRY_S)
        self.standing_by = False
        log.info("component domain claimed", extra={"domain": self.settings.xmpp_component_domain})

    async def _try_claim(self) -> bool:
        if not await self.lease.vacant():
            self._vacant_since = None
            return False
        now = time.monotonic()
        self._vacant_since = self._vacant_since or now
        # A process that owns partitions already lets a free one (never held, or handed
        # over) wait a little longer, so processes started together share them; a dead
        # owner's is claimed at once (services.im_gateway.partitions).
        # A domain handed over to us (services.im_gateway.rebalance) is claimed at once too.
        if not (self.lease.orphaned or self.lease.promised) and now - self._vacant_since < self.seats.delay():
            return False
        self.seats.held += 1  # at once: this process's other partitions see it
        if await self.component.claim(CLAIM_WITHIN_S):
            self._seated = True
            self._owned_since = time.monotonic()
            metrics.OWNED_SINCE.labels(self.settings.xmpp_component_domain).set(self._owned_since)
            metrics.OWNED_UNTIL.labels(self.settings.xmpp_component_domain).set(0)
            return True
        self.seats.held -= 1
        return False

    def hand_over(self, receiver: str | None) -> None:
        """Stop serving the domain gracefully (``run`` returns with ``handed_over``), and
        promise it to ``receiver`` (a member id) when releasing the lease."""
        self.receiver = receiver
        self.handed_over = True
        self._handing.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Start, then run until ``stop`` is set, the domain is handed over, or the lease is lost."""
        waiter = asyncio.ensure_future(stop.wait())
        starting = asyncio.ensure_future(self.start())
        done, _ = await asyncio.wait({waiter, starting}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()
            keeper = self._spawn(self.lease.keep(), "lease")
            handing = asyncio.ensure_future(self._handing.wait())
            await asyncio.wait({waiter, keeper, handing}, return_when=asyncio.FIRST_COMPLETED)
            handing.cancel()
            if keeper.done() and not keeper.cancelled() and keeper.exception():
                log.error("stopping: %s", keeper.exception())
                self.lease_lost = True
        else:
            starting.cancel()
        waiter.cancel()
        await self.stop()

    async def stop(self) -> None:
        """Graceful: what this gateway took in finishes here, then the stream closes,
        and only then is the lease released (a claimant never overlaps us).

        1. No new deliveries (basic.cancel); what was already delivered is written,
           confirmed by the ping barrier and acknowledged, so a handover resends nothing.
        2. The XMPP server is asked to hold what it routes to the domain from now on,
           for the next owner (mod_habla_hold; where it cannot, operators' lines still
           arriving are answered with an error, never silence); the lines already in
           hand are stored and receipted, and a last barrier ping makes sure the server
           has every receipt and error before the stream closes.
        3. The stream closes at once (without the hold the server bounces lines to the
           domain from then on, until the next owner is in: keep that gap short), the
           ownership span ends.
        4. Lease released (promised to the receiver of a handover first), channels
           closed (anything left unacknowledged returns to the queue; before the
           release if anything is), then the rest: background tasks, publishing what
           is already logged."""
        log.info("stopping: no new deliveries; letting in-flight lines finish")
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.cancel(), STOP_STEP_S)
        if not self.lease_lost:  # (lost: another gateway serves the domain already)
            await asyncio.gather(
                self.visitor_consumer.settle(STOP_STEP_S), self.conversation_consumer.settle(STOP_STEP_S)
            )
            if self.active:
                # Where the XMPP server holds the domain's stanzas for the next owner
                # (mod_habla_hold), nothing new arrives from here on and no line needs
                # refusing; elsewhere new lines get an error until the stream closes.
                held = await self.component.ask_hold()
                log.info("stopping: %s", "the XMPP server holds new stanzas" if held else "refusing new lines")
                await self.inbound.quiesce(QUIESCE_S, refuse=not held)
        log.info("stopping: the XMPP stream")
        # From here nothing new is written: component.stop() clears ``ready`` before its
        # first await (our writes check it); what slixmpp had queued goes out before the
        # stream's closing tag, which the server handles before it admits the next owner.
        # (The close itself waits up to a second for the server's goodbye.)
        stopped_writing = time.monotonic()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.component.stop(), STOP_STEP_S)
        if self._seated:  # before the release: a claimant never sees this process as owning it still
            domain = self.settings.xmpp_component_domain
            metrics.OWNED_UNTIL.labels(domain).set(stopped_writing)
            # The span in the log too: an audit trail of who could write when (the
            # handover tests read it once /metrics is gone with the process).
            log.info(
                "stream closed: ownership ended",
                extra={"domain": domain, "owned_since": self._owned_since, "owned_until": stopped_writing},
            )
            self.seats.held -= 1
            self._seated = False
        # Settled: nothing of ours is unacknowledged, the channels may close after the
        # release (keeping the gap between owners short). Otherwise first, so what is
        # left returns to the queue before the next owner consumes: a visitor's lines
        # stay in order.
        if not (self.visitor_consumer.idle and self.conversation_consumer.idle):
            await self._close_channels()
        if self.active:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.takeover_notice.released(), STOP_STEP_S)  # a clean stop
            if self.receiver is not None:
                # Renewed at the release: the receiver has the whole HANDOFF_TTL to claim.
                with contextlib.suppress(Exception):
                    await self.lease.hand_to(self.receiver)
                metrics.MOVES.inc()
            # Released now, not after the clean-up below: operators' lines to the
            # domain bounce until the next owner is in.
            with contextlib.suppress(Exception):
                await self.lease.release()
            self.active = False
        await self._close_channels()
        # Lines the server routed to us while it closed our stream: stored and published.
        await self.inbound.drain(STOP_STEP_S)
        await self.inbound.close()
        await self.visitor_consumer.close()
        await self.conversation_consumer.close()
        await self.desk.drain()  # lines already in the log still get published (RabbitMQ, not XMPP)
        log.info("stopping: background tasks")
        # Bounded like every other step: a task whose cancellation was swallowed inside
        # a client library must not keep the process from stopping. Cancelled again
        # while it runs: one that lost its cancel while Redis connected (Python 3.11,
        # libs.common.tasks) would otherwise run on, and reconnect, after the stop.
        stuck = await cancel_and_wait(self._tasks, STOP_STEP_S)
        if stuck:
            log.warning("stopping: background tasks did not finish", extra={"tasks": len(stuck)})
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.desk.delivered.close(), STOP_STEP_S)

    async def _close_channels(self) -> None:
        log.info("stopping: consumers (unacknowledged messages return to their queues)")
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                # Unacknowledged messages go back to the queue (also if we give up waiting).
                await asyncio.wait_for(consumer.stop(), STOP_STEP_S)
        self._consumers.clear()

    def _on_session_start(self, _event: Any) -> None:
        if not self.active:
            return  # claiming the domain: start() syncs once the operators are loaded
        # Every operator's roster is brought in line (or, without XEP-0356, every
        # operator invited and probed): that rebuilds availability after a restart
        # or reconnect.
        if self._roster_sync is not None:
            self._roster_sync.cancel()
        self._tasks = [task for task in self._tasks if not task.done()]
        self._roster_sync = self._spawn(self.rosters.sync_all(), "roster-sync")

    async def _watch_sites(self) -> None:
        """Site config changed (console, CLI): reload its operators and fix rosters."""
        while True:
            try:
                async for site_id in self.sitedir.changes():
                    await self._site_changed(site_id, await self.bindings.site_changed(site_id))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("site change watch failed; resubscribing")
                await asyncio.sleep(1)

    async def _site_changed(self, site_id: str, served: bool) -> None:
        change = await self.desk.operators.reload_site(site_id, served)
        if self.component.ready.is_set():
            await self.rosters.apply(change)

    async def _rebind(self) -> None:
        """Every RESYNC_S: sites created or moved without a notice reach us anyway."""
        while True:
            await asyncio.sleep(RESYNC_S)
            try:
                before = set(self.bindings.bound)
                after = await self.bindings.resync()
                for site_id in sorted(after ^ before):
                    await self._site_changed(site_id, site_id in after)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("site rebind failed; next try in %s s", RESYNC_S)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.presence_heartbeat_s)
            # Only a connected gateway vouches for operators: while the stream is down
            # their entries age out and the sites go offline by themselves.
            if not self.component.ready.is_set():
                continue
            try:
                await self.desk.availability.refresh()
            except Exception:
                log.exception("presence heartbeat failed")

    # --- health ---------------------------------------------------------------------
    async def check_xmpp(self) -> None:
        # Readiness: a standby is alive but serves nothing (docker's liveness probe,
        # services.im_gateway.healthcheck, accepts it).
        if not self.active:
            raise Standby(
                f"standby: another gateway serves {self.settings.xmpp_component_domain}; "
                "this one takes over within seconds of its end"
            )
        if not self.component.ready.is_set():
            raise ConnectionError("active gateway without an XMPP stream (reconnecting)")
