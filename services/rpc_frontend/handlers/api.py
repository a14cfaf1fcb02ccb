"""The widget's JSON API: session, messages, typing, identity, end, offline, status.

Bodies are JSON objects; the widget sends them as text/plain so a browser needs no
CORS preflight (the body is parsed the same either way). The visitor token travels
in the body ("token") or, for GET, in the query string.
"""

from __future__ import annotations

from typing import Any

from services.rpc_frontend.handlers.base import ApiError, ApiHandler, admit_ip
from services.rpc_frontend.metrics import LINES
from services.rpc_frontend.stream import catch_up, cursor_from_query


def status_json(online: bool, operators_available: int) -> dict[str, Any]:
    return {"online": online, "operators_available": operators_available}


class WidgetConfigHandler(ApiHandler):
    """GET: the site's theme and status, no session (preview, hosted page)."""

    async def get(self, site_id: str) -> None:
        site = await self.load_site(site_id)
        state = await self.frontend.sitecache.state(site_id)
        merged = self.frontend.sitecache.theme(site)
        self.reply(
            {"site_id": site_id, "theme": merged, "status": status_json(state.online, state.operators_available)}
        )


class SessionHandler(ApiHandler):
    """POST {token?, page: {url, title, referrer}}: start or resume a visit; records the page view."""

    async def post(self, site_id: str) -> None:
        # A site known from memory needs no Redis before the visit's own round trip, and
        # the per-IP limit is counted in it (the IP first, as load_site would). Every
        # answer given before it counts the IP first too, so a request is counted once
        # and a 429 still comes before any other refusal.
        site = self.held_site(site_id)
        ip_limit = None if site is None else self.ip_limit()
        if site is None:
            site = await self.load_site(site_id)
        try:
            if ip_limit is not None:
                self._allow_origin()
            body = self.json_body()
            page = _page(body)
            token = _optional_text(body, "token")
        except ApiError:
            if ip_limit is not None:
                await admit_ip(self.frontend, ip_limit.ip)
            raise
        # A returning visitor's view counts against their page-view limit (in the same
        # Redis round trip as the session); a new visitor is held by the per-IP limit.
        token, visitor = await self._guard(
            self.frontend.chat.start(
                site_id,
                token,
                page,
                self.request.headers.get("User-Agent", ""),
                pageview_limit=self.frontend.settings.visitor_pageviews_per_min,
                ip_limit=ip_limit,
            )
        )
        state = await self.frontend.sitecache.state(site_id)
        merged = self.frontend.sitecache.theme(site)
        session = visitor.session
        self.reply(
            {
                "token": token,
                "visitor_id": visitor.visitor_id,
                "conversation_id": visitor.conversation_id,
                "visitor": {k: session.get(k, "") for k in ("name", "email", "phone")},
                "theme": merged,
                "status": status_json(state.online, state.operators_available),
                "max_message_chars": self.frontend.settings.max_message_chars,
            }
        )


class PageViewHandler(ApiHandler):
    """POST {token, page}: the visitor opened another page (single-page sites call it)."""

    async def post(self, site_id: str) -> None:
        await self.load_site(site_id)
        body = self.json_body()
        visitor = await self.load_visitor(body.get("token"))
        page = _page(body)
        if not isinstance(page.get("url"), str) or not page["url"]:
            raise ApiError(400, "page.url must be the page's address")
        await self._guard(
            self.frontend.chat.start(
                site_id,
                body["token"],
                page,
                self.request.headers.get("User-Agent", ""),
                pageview_limit=self.frontend.settings.visitor_pageviews_per_min,
            )
        )
        self.reply({"ok": True, "visitor_id": visitor.visitor_id})


class MessagesHandler(ApiHandler):
    """POST {token, message_id, body}: send a line. GET ?token&conversation_id&after: read the log."""

    async def post(self, site_id: str) -> None:
        await self.load_site(site_id)
        body = self.json_body()
        visitor = await self.load_visitor(body.get("token"))
        limit = self.frontend.settings.visitor_messages_per_min  # counted in send's one round trip
        sent = await self._guard(
            self.frontend.chat.send(visitor, body.get("message_id"), body.get("body"), limit=limit)
        )
        LINES.labels("duplicate" if sent.duplicate else "new").inc()
        # The visitor's other tabs on this instance see their own line at once.
        self.frontend.hub.to_visitor(visitor.visitor_id, {"type": "log", "conversation_id": sent.conversation_id})
        self.reply({"conversation_id": sent.conversation_id, "seq": sent.seq, "duplicate": sent.duplicate})

    async def get(self, site_id: str) -> None:
        await self.load_site(site_id)
        visitor = await self.load_visitor(self.get_query_argument("token", ""))
        cursor = await self._guard(cursor_from_query(self.frontend.chat, visitor, self.get_query_argument))
        events = await catch_up(self.frontend.chat, visitor.visitor_id, cursor)
        self.reply({"events": events, "conversation_id": cursor.conversation_id, "after": cursor.after})


class TypingHandler(ApiHandler):
    """POST {token, typing: bool}."""

    async def post(self, site_id: str) -> None:
        await self.load_site(site_id)
        body = self.json_body()
        visitor = await self.load_visitor(body.get("token"))
        await self.limit_events(visitor.visitor_id)
        await self._guard(self.frontend.chat.typing(visitor, body.get("typing")))
        self.reply({"ok": True})


class VisitorHandler(ApiHandler):
    """POST {token, name?, email?, phone?}: the visitor told us who they are."""

    async def post(self, site_id: str) -> None:
        await self.load_site(site_id)
        body = self.json_body()
        visitor = await self.load_visitor(body.get("token"))
        await self.limit_events(visitor.visitor_id)
        known = await self._guard(self.frontend.chat.identify(visitor, body))
        self.reply({"visitor": known})


class EndHandler(ApiHandler):
    """POST {token}: the visitor ended the chat."""

    async def post(self, site_id: str) -> None:
        await self.load_site(site_id)
        body = self.json_body()
        visitor = await self.load_visitor(body.get("token"))
        ended = await self._guard(self.frontend.chat.end(visitor))
        self.reply({"ended": ended})


class OfflineHandler(ApiHandler):
    """POST {token?, message_id, name, email, body, page_url?}: the offline form."""

    async def post(self, site_id: str) -> None:
        await self.load_site(site_id)
        body = self.json_body()
        token = _optional_text(body, "token")
        visitor = await self.frontend.chat.visitor(token, site_id) if token else None
        await self.limit_messages(visitor.visitor_id if visitor else f"ip:{self.request.remote_ip}")
        page_url = _optional_text(body, "page_url")
        message_id = await self._guard(
            self.frontend.chat.leave_offline_message(
                site_id, visitor, body, page_url or (visitor.session.get("page_url", "") if visitor else "")
            )
        )
        self.reply({"message_id": message_id})


class StatusHandler(ApiHandler):
    """GET: is anyone there?"""

    async def get(self, site_id: str) -> None:
        await self.load_site(site_id)
        state = await self.frontend.sitecache.state(site_id)
        self.reply(status_json(state.online, state.operators_available))


def _page(body: dict[str, Any]) -> dict[str, Any]:
    """The page object, if any; a wrong type is a 400 (it is what /openapi.json says)."""
    page = body.get("page", {})
    if not isinstance(page, dict):
        raise ApiError(400, 'page must be an object like {"url": …, "title": …, "referrer": …}')
    for key in ("url", "title", "referrer"):
        if key in page and not isinstance(page[key], str):
            raise ApiError(400, f"page.{key} must be a string")
    return page


def _optional_text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    return value
