"""Receiving: a WebSocket per widget, or long-poll when WebSockets fail.

Both start from the client's (conversation_id, after) and send "entries" events with
every log line after it, then whatever the hub wakes them with. Event shapes:
{"type": "entries", "conversation_id", "entries": [...]}, {"type": "typing", "typing"},
{"type": "status", "online", "operators_available"}, {"type": "push", "url"},
{"type": "ended", "conversation_id"}, and on the WebSocket {"type": "sent", ...},
{"type": "error", ...}, {"type": "pong"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from typing import Any

import tornado.websocket

from libs.common.ratelimit import RateLimited
from libs.common.sitedir import UnknownSite
from libs.common.web import RedactedLogs, set_allow_header
from services.rpc_frontend.chat import OUTAGES, RETRY_AFTER_S, Invalid, Sent, SessionExpired, TooLarge, Visitor
from services.rpc_frontend.context import Frontend
from services.rpc_frontend.handlers.api import status_json
from services.rpc_frontend.handlers.base import (
    ApiError,
    ApiHandler,
    admit_ip,
    count_unknown_site,
    limit_events,
)
from services.rpc_frontend.hub import Event
from services.rpc_frontend.inputs import json_object
from services.rpc_frontend.metrics import LINES
from services.rpc_frontend.origins import origin_allowed
from services.rpc_frontend.stream import Cursor, catch_up, cursor_from_query

log = logging.getLogger(__name__)

# A parked long-poll answers after 20-25 s even if nothing happened: under the 30 s
# idle timeout of common proxies and load balancers; the jitter (as Zulip does) keeps
# thousands of clients from re-polling in lockstep.
LONGPOLL_MIN_S, LONGPOLL_MAX_S = 20.0, 25.0
# Refresh the session's TTL (30 min) from a live WebSocket once this long has passed,
# times a random factor of 1 to 2 per refresh (at most a third of the TTL): sockets
# opened together (a frontend restart's reconnects) spread their refreshes over five
# minutes instead of all coming due within one ping interval.
SESSION_REFRESH_S = 300
# Close code for an unknown or expired token (4000-4999: private use, RFC 6455 7.4.2);
# the widget renews its session and reconnects.
SESSION_EXPIRED = 4401
# "Try Again Later" (RFC 6455 registry): Redis or RabbitMQ is down for a moment.
TRY_AGAIN_LATER = 1013
# Seconds between server pings on each WebSocket (see app.py).
PING_INTERVAL_S = 45
# A WebSocket message from the widget is a small JSON object; the longest is a line.
MAX_WS_MESSAGE_BYTES = 64 * 1024


class ReceiveSocket(RedactedLogs, tornado.websocket.WebSocketHandler):
    """WS /api/sites/<site>/ws?token=…&conversation_id=…&after=N."""

    def initialize(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.visitor: Visitor | None = None
        self.cursor = Cursor()
        self._dirty = False
        self._check_session = True  # look for a newer conversation on the next catch-up
        self._pump: asyncio.Task[None] | None = None
        self._refresh_at = math.inf  # monotonic; inf: not open yet, or a refresh in flight

    async def get(self, *args: Any, **kwargs: Any) -> None:
        site_id = args[0]
        problem = await self._admit(site_id)
        if problem is not None:
            status, message = problem
            self.set_status(status)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps({"error": message, "status": status}))
            return
        await super().get(*args, **kwargs)

    async def _admit(self, site_id: str) -> tuple[int, str] | None:
        try:
            return await self._admit_visitor(site_id)
        except OUTAGES as exc:
            log.warning("WebSocket refused with 503: %s", exc)
            self.set_header("Retry-After", str(RETRY_AFTER_S))
            return 503, "temporarily unavailable; reconnect in a moment"

    async def _admit_visitor(self, site_id: str) -> tuple[int, str] | None:
        ip = self.request.remote_ip or "-"
        try:
            await admit_ip(self.frontend, ip)  # before any lookup
            site = await self.frontend.sitecache.config(site_id)
        except UnknownSite as exc:
            await count_unknown_site(self.frontend, ip)
            return 404, str(exc)
        except ApiError as exc:
            if exc.retry_after_s is not None:
                self.set_header("Retry-After", str(exc.retry_after_s))
            return exc.status_code, exc.message
        origin = self.request.headers.get("Origin")
        if not origin_allowed(origin, self.request.host, site.allowed_domains):
            return 403, f"origin {origin} may not use site {site_id}"
        self.visitor = await self.frontend.chat.visitor(self.get_query_argument("token", ""), site_id)
        if self.visitor is None:
            return None  # accepted, then closed with SESSION_EXPIRED: a browser cannot see a 401
        try:
            self.cursor = await cursor_from_query(self.frontend.chat, self.visitor, self.get_query_argument)
        except Invalid as exc:
            return 400, str(exc)
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            set_allow_header(self)
        super().write_error(status_code, **kwargs)

    def check_origin(self, origin: str) -> bool:
        return True  # checked against the site's allowed domains in _admit

    def get_compression_options(self) -> dict[str, Any] | None:
        return None  # per-message deflate costs ~300 KB per connection in zlib state

    async def open(self, *args: str, **kwargs: str) -> None:
        if self.visitor is None:
            self.close(SESSION_EXPIRED, "unknown or expired visitor token: start a session first")
            return
        self.frontend.hub.add(self.visitor.site_id, self.visitor.visitor_id, self)
        try:
            await self.frontend.chat.attach(self.visitor)
            state = await self.frontend.sitecache.state(self.visitor.site_id)
        except OUTAGES as exc:
            log.warning("WebSocket closed with 1013: %s", exc)
            self.close(TRY_AGAIN_LATER, "temporarily unavailable; reconnect in a moment")
            return
        self._refreshed(True)
        self._send({"type": "status", **status_json(state.online, state.operators_available)})
        self.wake({"type": "log"})
        if self._pump is not None:
            await self._pump
            self._pump = None  # done: a finished task kept for hours is memory for nothing
        # Everything up to now is history; what follows is news (unread count, events).
        self._send({"type": "synced", "conversation_id": self.cursor.conversation_id, "after": self.cursor.after})
        self._shed_handshake()

    def _shed_handshake(self) -> None:
        """Drop what only the handshake needed. Tornado keeps the request for as long as
        the socket lives (hours, for a visitor reading a page); its parsed headers and
        query were ~2.5 KB of the ~21 KB an idle socket cost (tracemalloc, under
        bench/bench_idle_ws.py). Emptied in place: Tornado's own handshake coroutine,
        suspended for the socket's life, holds the same headers object. Only
        ``request.uri`` and ``remote_ip`` are read later (log lines)."""
        request = self.request
        request.headers.clear()
        for parsed in (request.query_arguments, request.body_arguments, request.arguments, request.files):
            parsed.clear()

    def shutdown(self) -> None:
        """The instance is stopping: 1012 (service restart) tells the widget to reconnect, elsewhere."""
        self.close(1012, "restarting")

    def on_close(self) -> None:
        if self.visitor is not None:
            self.frontend.hub.remove(self.visitor.site_id, self.visitor.visitor_id, self)

    # --- hub → widget ---------------------------------------------------------------------
    def wake(self, event: Event) -> None:
        if event.get("type") == "log":
            self._dirty = True
            if event.get("conversation_id") != self.cursor.conversation_id or not self.cursor.conversation_id:
                self._check_session = True
            if self._pump is None or self._pump.done():
                self._pump = asyncio.create_task(self._catch_up())
        else:
            if event.get("type") == "ended" and self.visitor is not None:
                # The closer removed it from the session; typing events stop naming it.
                self.visitor = Visitor(
                    self.visitor.visitor_id, self.visitor.site_id, {**self.visitor.session, "conversation_id": ""}
                )
            self._send(dict(event))

    async def _catch_up(self) -> None:
        # One reader per connection, looping while wake-ups arrive, so the cursor only
        # moves forward and no entry is sent twice.
        assert self.visitor is not None
        while self._dirty and self.ws_connection is not None:
            self._dirty, check_session, self._check_session = False, self._check_session, False
            try:
                chat, visitor_id = self.frontend.chat, self.visitor.visitor_id
                for event in await catch_up(chat, visitor_id, self.cursor, check_session=check_session):
                    self._send(event)
            except Exception:  # Redis down: the widget re-syncs when it reconnects
                log.exception("catch-up failed", extra={"visitor": self.visitor.visitor_id})
                self.close(1011, "temporarily unavailable")
                return

    def _send(self, event: dict[str, Any]) -> None:
        if self.ws_connection is None:
            return
        with contextlib.suppress(tornado.websocket.WebSocketClosedError):
            # A socket that closes while the frame is being written fails this future;
            # unread, asyncio logs it with a traceback (hundreds when many widgets go).
            self.write_message(json.dumps(event)).add_done_callback(_retrieve)

    # --- widget → server -------------------------------------------------------------------
    async def on_message(self, message: str | bytes) -> None:
        if self.visitor is None:
            return  # being closed for a bad token
        try:
            data = json_object(message)
        except Invalid as exc:
            self._send({"type": "error", "status": 400, "error": str(exc)})
            return
        kind = data.get("type")
        message_id = data.get("message_id") if isinstance(data.get("message_id"), str) else None
        try:
            if kind == "send":
                await self._send_line(data)
            elif kind == "typing":
                await limit_events(self.frontend, self.visitor.visitor_id)
                await self.frontend.chat.typing(self.visitor, data.get("typing"))
            elif kind == "ping":
                self._refresh()
                self._send({"type": "pong"})
            else:
                self._send({"type": "error", "status": 400, "error": "type must be send, typing or ping"})
        except Invalid as exc:
            self._send({"type": "error", "status": 400, "error": str(exc), "message_id": message_id})
        except TooLarge as exc:
            self._send({"type": "error", "status": 413, "error": str(exc), "message_id": message_id})
        except OUTAGES as exc:
            # Redis or RabbitMQ is down for a moment: the widget resends the same id.
            log.warning("frame answered 503: %s", exc, extra={"visitor": self.visitor.visitor_id})
            self._send(
                {
                    "type": "error",
                    "status": 503,
                    "error": "temporarily unavailable; sending again",
                    "retry_after": RETRY_AFTER_S,
                    "message_id": message_id,
                }
            )
        except RateLimited as exc:
            self._send(
                {
                    "type": "error",
                    "status": 429,
                    "error": str(exc),
                    "retry_after": exc.retry_after_s,
                    "message_id": message_id,
                }
            )

    async def _send_line(self, data: dict[str, Any]) -> None:
        # The session read at connect time is good enough here: the conversation id is
        # taken from Redis atomically by chat.send, and page_url changes only with a new
        # page (and so a new socket). An expired session ends the socket with 4401.
        assert self.visitor is not None
        visitor = self.visitor
        limit = self.frontend.settings.visitor_messages_per_min  # counted in send's one round trip
        try:
            sent = await self.frontend.chat.send(visitor, data.get("message_id"), data.get("body"), limit=limit)
        except SessionExpired:
            self.close(SESSION_EXPIRED, "session expired: start a session again")
            return
        if sent.conversation_id != visitor.conversation_id:
            self.visitor = Visitor(
                visitor.visitor_id, visitor.site_id, {**visitor.session, "conversation_id": sent.conversation_id}
            )
        LINES.labels("duplicate" if sent.duplicate else "new").inc()
        self._send({"type": "sent", "message_id": data.get("message_id"), "seq": sent.seq, "duplicate": sent.duplicate})
        woken = {"type": "log", "conversation_id": sent.conversation_id}
        if self._echo(sent):
            self.frontend.hub.to_visitor(visitor.visitor_id, woken, besides=self)  # other tabs read the log
        else:
            self.frontend.hub.to_visitor(visitor.visitor_id, woken)

    def _echo(self, sent: Sent) -> bool:
        """Send the visitor's own line back on this socket from the line itself, not from
        a read of the log, when it is exactly the next entry this socket is missing: the
        cursor is in the line's conversation, right before its seq, and no catch-up is
        running or due (which could be about to send it). Else False: read as usual.
        No await between the check and the cursor's move, so the catch-up, which only
        moves the cursor forward, can never send the entry again."""
        cursor = self.cursor
        if sent.entry is None or self._dirty or (self._pump is not None and not self._pump.done()):
            return False
        if cursor.conversation_id != sent.conversation_id or cursor.after != sent.seq - 1:
            return False
        cursor.after = sent.seq
        self._send({"type": "entries", "conversation_id": sent.conversation_id, "entries": [sent.entry]})
        return True

    def _refresh(self) -> None:
        """Refresh the session if due: batched with other sockets' (VisitRefresher), so
        a wave of them takes one Redis connection, and never in the ping's way (the
        pong goes at once; a refresh that fails is due again at the next ping)."""
        assert self.visitor is not None
        if time.monotonic() >= self._refresh_at:
            self._refresh_at = math.inf
            self.frontend.chat.refresher.refresh(self.visitor.visitor_id, self.visitor.site_id, self._refreshed)

    def _refreshed(self, ok: bool) -> None:
        if not ok:
            self._refresh_at = time.monotonic()
            return
        ttl_s = self.frontend.settings.session_ttl_s
        self._refresh_at = time.monotonic() + min(random.uniform(1.0, 2.0) * SESSION_REFRESH_S, ttl_s / 3)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class _Parked:
    """A long-poll waiting in the hub."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.woken = asyncio.Event()

    def wake(self, event: Event) -> None:
        if event.get("type") != "log":
            self.events.append(dict(event))
        self.woken.set()


class PollHandler(ApiHandler):
    """GET /api/sites/<site>/poll?token&conversation_id&after: the WebSocket's fallback."""

    parked: _Parked | None = None
    gone = False

    async def get(self, site_id: str) -> None:
        await self.load_site(site_id)
        visitor = await self.load_visitor(self.get_query_argument("token", ""))
        last_seen_ms = int(visitor.session.get("last_seen", "0") or 0)
        stale = time.time() * 1000 - last_seen_ms > SESSION_REFRESH_S * 1000
        if stale or visitor.session.get("frontend_id") != self.frontend.settings.frontend_id:
            await self.frontend.chat.attach(visitor)  # deliveries come here; the session lives on
        cursor = await self._guard(cursor_from_query(self.frontend.chat, visitor, self.get_query_argument))
        events = await catch_up(self.frontend.chat, visitor.visitor_id, cursor)
        if not events:
            self.parked = _Parked()
            self.frontend.hub.add(site_id, visitor.visitor_id, self.parked)
            try:
                await asyncio.wait_for(self.parked.woken.wait(), random.uniform(LONGPOLL_MIN_S, LONGPOLL_MAX_S))
            except TimeoutError:
                pass
            finally:
                self.frontend.hub.remove(site_id, visitor.visitor_id, self.parked)
            if self.gone:
                return  # the browser gave up; its next poll resumes from the same cursor
            events = self.parked.events + await catch_up(self.frontend.chat, visitor.visitor_id, cursor)
        state = await self.frontend.sitecache.state(site_id)
        self.reply(
            {
                "events": events,
                "conversation_id": cursor.conversation_id,
                "after": cursor.after,
                "status": status_json(state.online, state.operators_available),
            }
        )

    def on_connection_close(self) -> None:
        self.gone = True
        if self.parked is not None:
            self.parked.woken.set()
