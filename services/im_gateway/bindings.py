"""Which sites' messages reach this gateway: those whose component domain is ours
(their own sites.xmpp_domain, or the partition of the default domain their id hashes
to: libs.common.partitions).

The gateway's queues carry its domain in their names (libs.common.topology); each site
it serves is bound to them by site id. The set of sites is read from MySQL at start,
again on every site-change notice (the console, `habla site set-xmpp-domain`), and
every RESYNC_S in case a notice was missed (Redis pub/sub loses messages published
while a subscriber reconnects).
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa

from libs.common import partitions, topology
from libs.common.db import site_store
from libs.common.messaging import Bus
from libs.common.settings import Settings

log = logging.getLogger(__name__)

# A site moved or created without a notice is picked up within this long: short next
# to how often sites are created or moved, long enough that one query per minute per
# gateway costs MySQL nothing.
RESYNC_S = 60.0


class SiteBindings:
    def __init__(self, bus: Bus, engine: sa.Engine, settings: Settings) -> None:
        self._bus = bus
        self._engine = engine
        self._settings = settings
        self.domain = settings.xmpp_component_domain
        self.queues = {
            "visitor": topology.gateway_visitor_queue(self.domain),
            "conversation": topology.gateway_conversation_queue(self.domain),
        }
        self.bound: set[str] = set()
        self._lock = asyncio.Lock()  # a resync and a notice never interleave their binds

    async def declare(self) -> None:
        for spec in self.queues.values():
            await self._bus.declare_queue(spec)

    async def _served(self) -> set[str]:
        def query() -> list[str]:
            with self._engine.connect() as conn:
                # Sites moved here by name, then (if this domain is a partition of the
                # default one) the default domain's sites whose hash falls in it.
                mine = site_store.sites_of_xmpp_domain(conn, self.domain, "")
                n = partitions.default_partition(self._settings, self.domain)
                if n is not None:
                    p = partitions.count(self._settings)
                    unnamed = site_store.sites_without_xmpp_domain(conn)
                    mine += [site for site in unnamed if partitions.partition_of(site, p) == n]
                return mine

        return set(await asyncio.to_thread(query))

    async def resync(self) -> set[str]:
        """Bind every site of our domain, unbind the others; returns the served set."""
        async with self._lock:
            served = await self._served()
            for site_id in sorted(served - self.bound):
                await self._bind(site_id)
            gone = self.bound - served
            for site_id in sorted(gone):
                await self._unbind(site_id)
            log.info("sites bound", extra={"domain": self.domain, "sites": len(self.bound), "unbound": len(gone)})
            return set(self.bound)

    async def site_changed(self, site_id: str) -> bool:
        """Re-check one site after a notice; True if this gateway serves it."""

        def query() -> str | None:
            with self._engine.connect() as conn:
                try:
                    return partitions.site_domain(self._settings, site_id, site_store.xmpp_domain_of(conn, site_id))
                except site_store.NotFound:
                    return None

        async with self._lock:
            mine = await asyncio.to_thread(query) == self.domain
            if mine and site_id not in self.bound:
                await self._bind(site_id)
            elif not mine and site_id in self.bound:
                await self._unbind(site_id)
            return mine

    async def _bind(self, site_id: str) -> None:
        for kind, keys in topology.gateway_site_bindings(site_id).items():
            for exchange, key in keys:
                await self._bus.bind(self.queues[kind].name, exchange, key)
        self.bound.add(site_id)
        log.debug("site bound", extra={"site": site_id, "domain": self.domain})

    async def _unbind(self, site_id: str) -> None:
        for kind, keys in topology.gateway_site_bindings(site_id).items():
            for exchange, key in keys:
                await self._bus.unbind(self.queues[kind].name, exchange, key)
        self.bound.discard(site_id)
        log.info("site unbound (served by another domain now)", extra={"site": site_id, "domain": self.domain})
