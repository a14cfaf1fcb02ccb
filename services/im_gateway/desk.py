"""The gateway's domain parts in one place, handed to relays, commands and consumers.

Built once by services.im_gateway.gateway; nothing here reaches for a global client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.common import siteids
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog
from libs.common.state.sessions import VisitorSessions
from services.im_gateway.availability import Availability
from services.im_gateway.coalescer import PresenceCoalescer
from services.im_gateway.dedupe import Delivered
from services.im_gateway.events import Events
from services.im_gateway.follows import Follows
from services.im_gateway.operators import OperatorDirectory
from services.im_gateway.outbox import Outbox
from services.im_gateway.routing import Routing
from services.im_gateway.visitors import VisitorNames, VisitorPages, page_status


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
    dirty_sites: set[str] = field(default_factory=set)  # site bot summaries to refresh
    shown: set[tuple[str, str]] = field(default_factory=set)  # (operator, visitor) given presence

    @property
    def domain(self) -> str:
        return self.settings.xmpp_component_domain

    def bot_jid(self, site_id: str) -> str:
        return f"{site_id}@{self.domain}"

    def site_of_bot(self, local: str) -> str | None:
        return local if siteids.is_site_id(local) else None

    async def visitor_status(self, visitor_id: str) -> str:
        """The visitor's page, as a presence status line."""
        pages = await self.pages.recent(visitor_id)
        if pages:
            return page_status(pages[0].url, pages[0].title)
        session = await self.sessions.get(visitor_id) or {}
        return page_status(session.get("page_url", ""), session.get("page_title", ""))

    async def show_visitor(self, operator: str, visitor_id: str, *, chatting: bool = True) -> None:
        """Directed presence from the visitor to the operator, now (before a first line)."""
        jid = await self.names.jid_of(visitor_id)
        self.outbox.presence(
            jid, operator, show="chat" if chatting else None, status=await self.visitor_status(visitor_id)
        )
        self.shown.add((operator, visitor_id))

    def info(self, sender: str, operator: str, text: str) -> None:
        """An [info] line to an operator (from the bot or a visitor JID)."""
        self.outbox.chat(sender, operator, f"[info] {text}")
