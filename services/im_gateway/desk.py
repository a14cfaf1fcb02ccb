"""The gateway's domain parts in one place, handed to relays, commands and consumers.

Built once by services.im_gateway.gateway; nothing here reaches for a global client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from libs.common import siteids
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog
from libs.common.state.sessions import VisitorSessions
from services.im_gateway import voice
from services.im_gateway.availability import Availability
from services.im_gateway.coalescer import PresenceCoalescer
from services.im_gateway.dedupe import Delivered
from services.im_gateway.events import Events
from services.im_gateway.follows import Follows
from services.im_gateway.operators import OperatorDirectory
from services.im_gateway.outbox import Outbox
from services.im_gateway.routing import Routing
from services.im_gateway.visitors import VisitorNames, VisitorPages, page_status

log = logging.getLogger(__name__)

# (operator, visitor) pairs remembered as already shown a visitor's presence.
SHOWN_KEPT = 100_000


@dataclass
class Desk:
    settings: Settings
    outbox: Outbox
    sessions: VisitorSessions
    log: ConversationLog
    names: VisitorNames
    pages: VisitorPages
    operators: OperatorDirectory
    availability: Availability
    routing: Routing
    coalescer: PresenceCoalescer
    events: Events
    delivered: Delivered
    follows: Follows
    # Whether the gateway writes this operator's roster itself (XEP-0356 granted and
    # working, services.im_gateway.privilege); if not, visitors ask to be added.
    roster_managed: Callable[[str], bool] = field(default=lambda _operator: False)
    dirty_sites: set[str] = field(default_factory=set)  # site bot summaries to refresh
    shown: set[tuple[str, str]] = field(default_factory=set)  # (operator, visitor) given presence
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # Operator lines being published at once: enough to hide two broker confirms per
    # line (~2 ms each), few enough that a RabbitMQ outage stalls the operator quickly.
    background_limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))

    @property
    def domain(self) -> str:
        return self.settings.xmpp_component_domain

    def bot_jid(self, site_id: str) -> str:
        return f"{site_id}@{self.domain}"

    def site_of_bot(self, local: str) -> str | None:
        return local if siteids.is_site_id(local) else None

    async def visitor_status(self, visitor_id: str) -> str:
        """The visitor's page, as a presence status line."""
        page = await self.pages.latest(visitor_id)
        if page:
            return page_status(page.url, page.title)
        session = await self.sessions.get(visitor_id) or {}
        return page_status(session.get("page_url", ""), session.get("page_title", ""))

    async def show_visitor(self, operator: str, visitor_id: str, *, chatting: bool = True) -> None:
        """Directed presence from the visitor to the operator, now (before a first line)."""
        jid = await self.names.jid_of(visitor_id)
        self.outbox.presence(
            jid, operator, show="chat" if chatting else None, status=await self.visitor_status(visitor_id)
        )
        self.remember_shown(operator, visitor_id)

    async def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task; waits first while too many are running (backpressure)."""
        await self.background_limit.acquire()
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        self.background_limit.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("background publish failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for background work (graceful stop)."""
        if self.background:
            await asyncio.wait(set(self.background), timeout=3)

    def remember_shown(self, operator: str, visitor_id: str) -> None:
        # Forgetting costs one repeated presence per chat: cheaper than unbounded memory.
        if len(self.shown) >= SHOWN_KEPT:
            self.shown.clear()
        self.shown.add((operator, visitor_id))

    async def hide_visitor(self, conversation: Any) -> None:
        """After a chat ends, the visitor leaves the operators' lists unless they follow it."""
        jid = await self.names.jid_of(conversation.visitor_id)
        followers = await self.follows.followers(conversation.visitor_id)
        for operator in conversation.recipients:
            if operator not in followers:
                self.coalescer.update(operator, jid, kind="unavailable", status="Chat ended")

    def info(self, sender: str, operator: str, text: str) -> None:
        """A "[Habla] …" line to an operator (from the bot or a visitor JID; see voice)."""
        self.outbox.chat(sender, operator, voice.from_habla(text))
