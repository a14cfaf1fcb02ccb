"""Recent conversations of a site and their transcripts, read from MySQL (the
transcript worker's archive). Every line is shown as text."""

from __future__ import annotations

import tornado.web

from services.console.handlers.base import Page
from services.console.handlers.sites import site_page_context


class Conversations(Page):
    @tornado.web.authenticated
    async def get(self, site_id: str) -> None:
        site = await self.owned_site(site_id)
        recent = await self.db(self.console.store.recent_conversations, site.id)
        self.render_page(
            "conversations.html", tab="conversations", conversations=recent, **site_page_context(self, site)
        )


class Transcript(Page):
    @tornado.web.authenticated
    async def get(self, site_id: str, conversation_id: str) -> None:
        site = await self.owned_site(site_id)
        summary = await self.db(self.console.store.conversation, site.id, conversation_id)
        if summary is None:
            raise tornado.web.HTTPError(404)
        lines = await self.db(self.console.store.transcript, site.id, conversation_id)
        self.render_page(
            "transcript.html", tab="conversations", conversation=summary, lines=lines, **site_page_context(self, site)
        )
