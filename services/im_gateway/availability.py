"""Operator availability: XMPP presence → Redis (with heartbeat expiry) → site online.

Each operator resource's presence is kept here in memory and in Redis through
libs.common.state.presence.OperatorPresence, whose entries expire after
HABLA_PRESENCE_TTL_S unless refreshed: the heartbeat refreshes them every
HABLA_PRESENCE_HEARTBEAT_S, so if this gateway dies its sites go offline by themselves.
Every change is published (OperatorPresence, and SiteStatus when a site's count of
available operators changes).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from libs.common import codec
from libs.common.state.presence import OperatorPresence
from services.im_gateway.events import Events, now_ms
from services.im_gateway.operators import OperatorDirectory

log = logging.getLogger(__name__)

# RFC 6121 <show/> values; no <show/> means plainly available.
SHOW_TO_AVAILABILITY: dict[str, int] = {
    "": codec.Availability.AVAILABLE,
    "chat": codec.Availability.AVAILABLE,
    "away": codec.Availability.AWAY,
    "xa": codec.Availability.XA,
    "dnd": codec.Availability.DND,
}


class Availability:
    def __init__(
        self, presence: OperatorPresence, events: Events, directory: OperatorDirectory, heartbeat_s: float
    ) -> None:
        self._presence = presence
        self._events = events
        self._directory = directory
        self._heartbeat_s = heartbeat_s
        self._resources: dict[str, dict[str, int]] = {}  # operator -> resource -> Availability
        self._announced: dict[str, int] = {}  # site -> operators available, last published

    def is_online(self, operator: str) -> bool:
        """Some resource is connected (available, away, xa or dnd)."""
        return bool(self._resources.get(operator))

    def is_available(self, operator: str) -> bool:
        return any(a == codec.Availability.AVAILABLE for a in self._resources.get(operator, {}).values())

    def online_operators(self, site_id: str) -> list[str]:
        return [op for op in self._directory.operators_of(site_id) if self.is_online(op)]

    async def available_operators(self, site_id: str) -> list[str]:
        return await self._presence.available_operators(site_id)

    async def update(self, operator: str, resource: str, show: str | None, status: str | None, online: bool) -> None:
        """One resource's presence changed (or arrived after a probe)."""
        availability = SHOW_TO_AVAILABILITY.get(show or "", codec.Availability.AVAILABLE)
        resources = self._resources.setdefault(operator, {})
        if online:
            resources[resource] = availability
        else:
            resources.pop(resource, None)
            availability = codec.Availability.UNAVAILABLE
        if not resources:
            self._resources.pop(operator, None)
        sites = self._directory.sites_of(operator)
        await self._presence.set_available(sites, operator, resource, availability == codec.Availability.AVAILABLE)
        struct = codec.OperatorPresence(
            operator_jid=operator,
            resource=resource,
            availability=availability,
            status_text=status or None,
            at_ms=now_ms(),
            site_ids=sites,
        )
        for site_id in sites:
            await self._events.operator_presence(site_id, struct)
        await self.announce(sites)

    async def forget(self, operator: str, site_id: str) -> None:
        """The operator no longer serves ``site_id``: drop their resources there."""
        for resource in list(self._resources.get(operator, {})):
            await self._presence.set_available([site_id], operator, resource, False)
        await self.announce([site_id])

    async def announce(self, site_ids: list[str]) -> None:
        """Recompute sites (expiring stale resources) and publish those that changed."""
        for site_id in site_ids:
            count = await self._presence.recompute(site_id)
            if self._announced.get(site_id) != count:
                self._announced[site_id] = count
                await self._events.site_status(site_id, count > 0, count)
                log.info("site status", extra={"site": site_id, "online": count > 0, "operators_available": count})

    async def heartbeat(self) -> None:
        """Refresh every available resource, then recompute every site (until cancelled)."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self.refresh()
            except Exception:  # Redis blip: the next heartbeat tries again before the TTL
                log.exception("presence heartbeat failed")

    async def refresh(self) -> None:
        for operator, resources in list(self._resources.items()):
            sites = self._directory.sites_of(operator)
            for resource, availability in list(resources.items()):
                if availability == codec.Availability.AVAILABLE:
                    await self._presence.set_available(sites, operator, resource, True)
        await self.announce(self._directory.sites())

    def snapshot(self) -> dict[str, Any]:
        return {op: dict(res) for op, res in self._resources.items()}
