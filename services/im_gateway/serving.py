"""One gateway process serving several partitions (component domains).

Each partition is a services.im_gateway.gateway.Gateway of its own: its own component
connection, lease, queues and bindings, standing by until its domain is free. What they
share lives in Redis (operator presence, assignments, routing, conversation logs), so a
partition that moves to another process keeps every conversation with its operator.

With partitions, the process is also a member of the deployment's rebalancing
(services.im_gateway.rebalance): it hands partitions over to a process that joined,
and on a graceful stop promises each of its partitions to the live member holding
fewest before letting go.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import partitions
from libs.common.messaging import Bus
from libs.common.settings import Settings
from libs.common.tasks import cancel_and_wait
from services.im_gateway.gateway import STANDBY_RETRY_S, Gateway, Standby
from services.im_gateway.partitions import Seats, agree_on_count
from services.im_gateway.rebalance import Rebalancer, farewell, member_of

log = logging.getLogger(__name__)

# A handing-over gateway's stop is bounded step by step (gateway.STOP_STEP_S each); the
# move waits at most this long for it to let go.
LET_GO_WITHIN_S = 20.0
# A stopping process waits this long for its rebalancing tasks to end.
STOP_HELPERS_S = 2.0


def domains(settings: Settings) -> list[str]:
    """The component domains this process may own. A gateway configured for a domain of
    its own (HABLA_XMPP_COMPONENT_DOMAIN other than the default one) serves just that
    one; the default domain's gateways serve its partitions (with P = 1: the domain)."""
    if settings.xmpp_component_domain != settings.default_component_domain:
        return [settings.xmpp_component_domain]
    return [partitions.partition_domain(settings, n) for n in partitions.served(settings)]


def for_domain(settings: Settings, domain: str) -> Settings:
    # The default domain pinned first: changing xmpp_component_domain would move it.
    return dataclasses.replace(
        settings, xmpp_default_component_domain=settings.default_component_domain, xmpp_component_domain=domain
    )


class Serving:
    def __init__(self, settings: Settings, bus: Bus, redis: aioredis.Redis, engine: sa.Engine) -> None:
        self._settings, self._bus, self._redis, self._engine = settings, bus, redis, engine
        self.seats = Seats()
        self.domains = domains(settings)
        self.gateways: dict[str, Gateway] = {}
        self.lease_lost = False
        partitioned = (
            settings.xmpp_component_domain == settings.default_component_domain and partitions.count(settings) > 1
        )
        # A process that may own only some partitions is pinned: it takes no part in moves.
        pinned = len(self.domains) < partitions.count(settings)
        self.rebalancer: Rebalancer | None = None
        if partitioned:
            self.rebalancer = Rebalancer(redis, settings, self.owners, self.hand_over, pinned=pinned)

    async def run(self, stop: asyncio.Event) -> None:
        if self._settings.xmpp_component_domain == self._settings.default_component_domain:
            await agree_on_count(self._redis, self._settings, partitions.count(self._settings))
        # The gateways stop on ``halt``: set once a graceful stop has promised our
        # partitions to the other members (``_farewell``).
        halt = asyncio.Event()
        serving = asyncio.gather(*(self._serve(domain, halt) for domain in self.domains))
        helpers: list[asyncio.Future[None]] = []
        if self.rebalancer is not None:
            helpers.append(asyncio.ensure_future(self.rebalancer.run()))
        helpers.append(asyncio.ensure_future(self._farewell(stop, halt, helpers[:1])))
        try:
            await serving
        finally:
            await _cancel(helpers)
            if self.rebalancer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.rebalancer.members.leave(), 3)

    async def owners(self) -> dict[int, str | None]:
        """Partition number -> member id holding its lease (None: free)."""
        keys = [self._settings.redis_key("gw", "lease", d) for d in partitions.all_domains(self._settings)]
        return {n: member_of(str(token) if token else None) for n, token in enumerate(await self._redis.mget(keys))}

    async def hand_over(self, numbers: list[int], receiver: str) -> None:
        """Hand partitions we own over to ``receiver`` (a rebalancing move)."""
        gateways = [self.gateways.get(partitions.partition_domain(self._settings, n)) for n in numbers]
        moving = [g for g in gateways if g is not None and g.active]
        for gateway in moving:
            await gateway.lease.hand_to(receiver)
        # The receiver's standby sees the promise at its next look (STANDBY_RETRY_S) and
        # then looks every HANDOFF_POLL_S: it claims the moment we release.
        await asyncio.sleep(STANDBY_RETRY_S + 0.2)
        for gateway in moving:
            gateway.hand_over(receiver)
        # Back once each has let go (lease released), so the next plan sees it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LET_GO_WITHIN_S
        while loop.time() < deadline:
            if not any(g.active for g in moving):
                break
            await asyncio.sleep(0.05)

    async def _farewell(
        self, stop: asyncio.Event, halt: asyncio.Event, rebalancing: list[asyncio.Future[None]]
    ) -> None:
        """On a graceful stop: stop beating and moving, leave the members, promise each
        partition we own to the live member holding fewest, give their standbys a look
        to see it, then halt. Bounded: whatever fails here, partitions are released
        anyway (and claimed by whoever looks first)."""
        await stop.wait()
        if self.rebalancer is not None:
            self.rebalancer.stopped = True  # also if the cancellation below gets swallowed
        await _cancel(rebalancing)
        try:
            if self.rebalancer is not None:
                await asyncio.wait_for(self._promise_all(), STANDBY_RETRY_S + 3)
        except Exception as exc:
            log.warning("stopping: partitions not promised to other gateways: %s", exc)
        finally:
            halt.set()

    async def _promise_all(self) -> None:
        assert self.rebalancer is not None
        members = self.rebalancer.members
        await members.leave()
        handoffs = farewell(members.me, await members.live(), await self.owners(), await members.pinned_members())
        for n, receiver in handoffs.items():
            gateway = self.gateways.get(partitions.partition_domain(self._settings, n))
            if gateway is not None and gateway.active:
                await gateway.lease.hand_to(receiver)
                gateway.receiver = receiver
        if handoffs:
            log.info("stopping: partitions promised", extra={"to": ",".join(sorted(set(handoffs.values())))})
            await asyncio.sleep(STANDBY_RETRY_S + 0.2)

    async def _serve(self, domain: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            gateway = Gateway(for_domain(self._settings, domain), self._bus, self._redis, self._engine, self.seats)
            self.gateways[domain] = gateway
            await gateway.run(stop)
            if gateway.handed_over and not stop.is_set():
                # Handed over to another member: stand by for it again (the handoff
                # record keeps us from claiming it back).
                continue
            if not gateway.lease_lost:
                return
            if len(self.domains) == 1:
                # One domain: exit non-zero as before, the supervisor restarts us as a standby.
                self.lease_lost = True
                return
            # Another process owns it now: stand by for it again, the others untouched.
            log.warning("partition taken over by another gateway; standing by for it", extra={"domain": domain})

    async def check_xmpp(self) -> None:
        """Healthy while every partition we own has its stream; Standby if we own none."""
        active = [g for g in self.gateways.values() if g.active]
        if not active:
            raise Standby(f"standby: other gateways serve {', '.join(self.domains)}; this one takes over in seconds")
        for gateway in active:
            await gateway.check_xmpp()

    def owned(self) -> list[str]:
        return [domain for domain, g in self.gateways.items() if g.active]


async def _cancel(tasks: list[asyncio.Future[None]]) -> None:
    """Cancel and wait, bounded: a cancellation that lands inside a Redis call can be
    swallowed by the client, and a stopping process must not wait for it forever
    (cancel_and_wait cancels such a task again while it runs)."""
    await cancel_and_wait(tasks, STOP_HELPERS_S)
