"""The site bot's status line: "4 visitors on site, 1 chatting", kept current cheaply.

Visitor churn only marks a site dirty; the summary is recomputed at most once per
presence interval and goes to each operator through the coalescer, so a burst of
page views costs each operator one bot presence per interval at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from services.im_gateway.desk import Desk

log = logging.getLogger(__name__)

# Shown after the summary to operators whose XMPP server grants the gateway no roster
# access (XEP-0356): what to ask for, so visitors appear without prompts.
NO_PRIVILEGE_HINT = (
    "visitors ask to be added one by one: let your XMPP server grant Habla roster access (XEP-0356, see !help)"
)


def summary_text(visitors: int, chatting: int) -> str:
    return f"{visitors} visitor{'s' if visitors != 1 else ''} on site, {chatting} chatting"


class SiteBot:
    def __init__(self, desk: Desk) -> None:
        self._desk = desk
        self._last: dict[str, str] = {}  # site -> summary last queued
        # Set by the gateway: what else a dirty site needs (services.im_gateway.rosters
        # refreshes the visitors in rosters).
        self.after_refresh: Callable[[str], Awaitable[None]] | None = None

    def status_for(self, operator: str, summary: str) -> str:
        return summary if self._desk.roster_managed(operator) else f"{summary} — {NO_PRIVILEGE_HINT}"

    async def summary(self, site_id: str) -> str:
        visitors = await self._desk.sessions.count_on_site(site_id)  # counted in Redis, not listed
        return summary_text(visitors, await self._desk.routing.chatting(site_id))

    def present_to(self, operator: str, site_id: str) -> None:
        """Queue the bot's presence for one operator (after a subscription or probe)."""
        status = self.status_for(operator, self._last.get(site_id, "Habla site bot: send !help"))
        self._desk.coalescer.update(operator, self._desk.bot_jid(site_id), status=status)
        self._desk.dirty_sites.add(site_id)

    async def refresh(self) -> None:
        dirty, self._desk.dirty_sites = self._desk.dirty_sites, set()
        for site_id in dirty:
            if self.after_refresh is not None:
                try:
                    await self.after_refresh(site_id)
                except Exception:  # the next change of the site tries again
                    log.exception("roster refresh failed", extra={"site": site_id})
            text = await self.summary(site_id)
            if self._last.get(site_id) == text:
                continue
            self._last[site_id] = text
            for operator in self._desk.operators.operators_of(site_id):
                if self._desk.availability.is_online(operator):
                    self._desk.coalescer.update(
                        operator, self._desk.bot_jid(site_id), status=self.status_for(operator, text)
                    )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._desk.coalescer.interval_s)
            try:
                await self.refresh()
            except Exception:  # a Redis blip delays a status line, nothing more
                log.exception("site bot refresh failed")
