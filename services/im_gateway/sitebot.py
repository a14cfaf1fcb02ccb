"""The site bot's status line: "4 visitors on site, 1 chatting", kept current cheaply.

Visitor churn only marks a site dirty; the summary is recomputed at most once per
presence interval and goes to each operator through the coalescer, so a burst of
page views costs each operator one bot presence per interval at most.
"""

from __future__ import annotations

import asyncio
import logging

from services.im_gateway.desk import Desk

log = logging.getLogger(__name__)


def summary_text(visitors: int, chatting: int) -> str:
    return f"{visitors} visitor{'s' if visitors != 1 else ''} on site, {chatting} chatting"


class SiteBot:
    def __init__(self, desk: Desk) -> None:
        self._desk = desk
        self._last: dict[str, str] = {}  # site -> summary last queued

    async def summary(self, site_id: str) -> str:
        visitors = len(await self._desk.sessions.on_site(site_id))
        return summary_text(visitors, await self._desk.routing.chatting(site_id))

    def present_to(self, operator: str, site_id: str) -> None:
        """Queue the bot's presence for one operator (after a subscription or probe)."""
        status = self._last.get(site_id, "Habla site bot: send !help")
        self._desk.coalescer.update(operator, self._desk.bot_jid(site_id), status=status)
        self._desk.dirty_sites.add(site_id)

    async def refresh(self) -> None:
        dirty, self._desk.dirty_sites = self._desk.dirty_sites, set()
        for site_id in dirty:
            text = await self.summary(site_id)
            if self._last.get(site_id) == text:
                continue
            self._last[site_id] = text
            for operator in self._desk.operators.operators_of(site_id):
                if self._desk.availability.is_online(operator):
                    self._desk.coalescer.update(operator, self._desk.bot_jid(site_id), status=text)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._desk.coalescer.interval_s)
            try:
                await self.refresh()
            except Exception:  # a Redis blip delays a status line, nothing more
                log.exception("site bot refresh failed")
