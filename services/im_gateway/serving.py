"""One gateway process serving several partitions (component domains).

Each partition is a services.im_gateway.gateway.Gateway of its own: its own component
connection, lease, queues and bindings, standing by until its domain is free. What they
share lives in Redis (operator presence, assignments, routing, conversation logs), so a
partition that moves to another process keeps every conversation with its operator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import partitions
from libs.common.messaging import Bus
from libs.common.settings import Settings
from services.im_gateway.gateway import Gateway, Standby
from services.im_gateway.partitions import Seats, agree_on_count

log = logging.getLogger(__name__)


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

    async def run(self, stop: asyncio.Event) -> None:
        if self._settings.xmpp_component_domain == self._settings.default_component_domain:
            await agree_on_count(self._redis, self._settings, partitions.count(self._settings))
        await asyncio.gather(*(self._serve(domain, stop) for domain in self.domains))

    async def _serve(self, domain: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            gateway = Gateway(for_domain(self._settings, domain), self._bus, self._redis, self._engine, self.seats)
            self.gateways[domain] = gateway
            await gateway.run(stop)
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
