"""What a visitor can do, knowing nothing of HTTP: the frontend's domain code.

Every method publishes on RabbitMQ (confirmed) before it returns, so "ok" to the
widget means the line is in the log and on its way; a retry with the same message
id appends nothing and republishes the same id (consumers dedupe by it).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from libs.common import codec, topology
from libs.common.messaging import BrokerUnavailable, Bus
from libs.common.ratelimit import RateLimiter
from libs.common.settings import Settings
from libs.common.state.conversations import LOG_TTL_S, ConversationLog, FloorSource, chat_line
from libs.common.state.sessions import VisitorSessions
from services.rpc_frontend.departures import Departures
from services.rpc_frontend.lines import LineWriter
from services.rpc_frontend.unconfirmed import Unconfirmed, UnconfirmedLines
from services.rpc_frontend.visits import IpLimit, OtherSite, VisitRefresher, Visits

# Client-generated ids: a UUID (32-36 chars) in practice; 8-64 of these characters
# leave room for other clients without letting an id carry anything odd.
# Always used with fullmatch: a "$" would also accept a trailing newline.
MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
# A pragmatic address check (one @, a dot in the domain); the mail server decides.
# Characters are named explicitly (not "\s"): Python's and JavaScript's "\s" differ, and
# /openapi.json states the same pattern, so a generated valid address is valid here too.
_ADDRESS_CHAR = r"[^@<>\u0000-\u0020\u007f]"
EMAIL_RE = re.compile(rf"{_ADDRESS_CHAR}+@{_ADDRESS_CHAR}+\.{_ADDRESS_CHAR}+")
# What is trimmed from a field (ASCII blanks; str.strip() would also eat \x1c-\x1f).
BLANKS = " \t\n\r"
# Name, phone and page fields: longer than any real one, short enough for a roster line.
MAX_FIELD_CHARS = 200
MAX_URL_CHARS = 2000  # the classic practical URL limit
MAX_USER_AGENT_CHARS = 400  # real ones are 100-250 characters; longer is padding or abuse

# Failures that pass: Redis down or loading a snapshot, RabbitMQ down or not confirming.
# The widget is told to retry (HTTP 503 + Retry-After, or an error frame with
# "retry_after") and resends the same message id, which appends nothing twice.
OUTAGES: tuple[type[Exception], ...] = (
    BrokerUnavailable,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
# Seconds a widget waits before resending after an outage answer: the robust AMQP
# connection reconnects within ~5 s and Redis restarts in about 1 s, so 2 s, then the
# widget's own back-off, finds them back without hammering them.
RETRY_AFTER_S = 2


class Invalid(ValueError):
    """Input the visitor can fix; the message says how (HTTP 400)."""


class TooLarge(ValueError):
    """A message longer than the limit (HTTP 413)."""


class SessionExpired(LookupError):
    """The visitor's session is gone (HTTP 401 / WebSocket 4401): the widget starts a new one."""


@dataclass(frozen=True)
class Visitor:
    visitor_id: str
    site_id: str
    session: dict[str, str]

    @property
    def conversation_id(self) -> str:
        return self.session.get("conversation_id", "")


@dataclass(frozen=True)
class Sent:
    conversation_id: str
    seq: int
    duplicate: bool
    # The log entry as readers get it (ConversationLog.after), when this send appended
    # it and nothing else needs a read of the log: the sender's socket echoes it from
    # here instead of reading it back. None for a retry or after a repair.
    entry: dict[str, Any] | None = None


def now_ms() -> int:
    return int(time.time() * 1000)


def clip(value: Any, limit: int = MAX_FIELD_CHARS) -> str:
    return value[:limit] if isinstance(value, str) else ""


class VisitorChat:
    def __init__(self, redis: aioredis.Redis, bus: Bus, settings: Settings, floor: FloorSource | None = None) -> None:
        self._redis = redis
        self._bus = bus
        self._settings = settings
        self.sessions = VisitorSessions(redis, settings)
        self.log = ConversationLog(redis, settings, floor)
        self.unconfirmed = UnconfirmedLines(redis, bus, self.log, settings)
        self.lines = LineWriter(redis, settings)
        self.limits = RateLimiter(redis, settings)
        self.departures = Departures(redis, bus, settings)
        self.visits = Visits(redis, settings, self.departures.key)
        self.refresher = VisitRefresher(redis, self.visits, settings.frontend_id)

    # --- sessions ----------------------------------------------------------------------
    async def visitor(self, token: str, site_id: str) -> Visitor | None:
        """The visitor a token belongs to, if the token is genuine and its session lives on this site."""
        visitor_id = self.sessions.visitor_of(token) if token else None
        if visitor_id is None:
            return None
        session = await self.sessions.get(visitor_id)
        if session is None or session.get("site_id") != site_id:
            return None
        return Visitor(visitor_id, site_id, session)

    async def start(
        self,
        site_id: str,
        token: str,
        page: dict[str, Any],
        user_agent: str,
        *,
        pageview_limit: int | None = None,
        ip_limit: IpLimit | None = None,
    ) -> tuple[str, Visitor]:
        """Start or resume a visit and record the page view. Returns (token, visitor).

        ``pageview_limit``: count the view against a returning visitor's per-minute
        limit (RateLimited when over it); ``ip_limit``: the request's per-IP limits
        (``Visits.record``). One Redis round trip (``visits``), then the VisitorEvent
        ARRIVED (a new visit) and the PageView confirmed together."""
        returning = self.sessions.visitor_of(token) if token else None
        url, title, referrer = (
            clip(page.get("url"), MAX_URL_CHARS),
            clip(page.get("title")),
            clip(page.get("referrer"), MAX_URL_CHARS),
        )
        fields = {"frontend_id": self._settings.frontend_id, "user_agent": clip(user_agent, MAX_USER_AGENT_CHARS)}
        if url:
            fields.update(page_url=url, page_title=title, referrer=referrer)
        limit = pageview_limit if returning and url else None
        visitor_id = returning or self.sessions.new_visitor_id()
        try:
            visit = await self.visits.record(
                visitor_id, site_id, fields, page=bool(url), pageview_limit=limit, ip_limit=ip_limit
            )
        except OtherSite:  # a token of another site: a new visitor here (the IP was counted)
            visitor_id = self.sessions.new_visitor_id()
            visit = await self.visits.record(visitor_id, site_id, fields, page=bool(url))
        visitor = Visitor(visitor_id, site_id, visit.session)
        messages: list[tuple[str, Any]] = []
        if not visit.existed:
            messages.append((f"{site_id}.event", self._event_struct(visitor, codec.VisitorEventKind.ARRIVED)))
        if url:
            view = codec.PageView(
                visitor_id=visitor_id,
                site_id=site_id,
                url=url,
                title=title,
                referrer=referrer,
                viewed_at_ms=now_ms(),
                conversation_id=visitor.conversation_id or None,
                user_agent=fields["user_agent"],
            )
            messages.append((f"{site_id}.pageview", view))
        # Both confirms in flight at once (one round trip to the broker, not two); the
        # answer still waits for both.
        await self._bus.publish_all(topology.VISITOR, messages)
        # A returning visitor's token is already the one token_for would make.
        return token if visitor_id == returning else self.sessions.token_for(visitor_id), visitor

    async def attach(self, visitor: Visitor) -> None:
        """Record that this instance holds the visitor's connection now (deliveries come
        here), and that the visit goes on: one round trip (the visit script, no page).
        An open socket's later refreshes go through ``refresher`` (batched)."""
        fields = {"frontend_id": self._settings.frontend_id}
        await self.visits.record(visitor.visitor_id, visitor.site_id, fields, page=False)

    # --- conversations -------------------------------------------------------------------
    def _owner_key(self, conversation_id: str) -> str:
        return self._settings.redis_key("conv", conversation_id, "visitor")

    async def owns(self, visitor: Visitor, conversation_id: str) -> bool:
        """May this visitor read that conversation? Only their current or an earlier own one."""
        if not conversation_id:
            return False
        if conversation_id == visitor.conversation_id:
            return True
        return bool(await self._redis.get(self._owner_key(conversation_id)) == visitor.visitor_id)

    async def claim(self, visitor_id: str, conversation_id: str) -> None:
        # Remembered for the log's lifetime so the visitor can still read the end of a
        # conversation after the closer removed it from the session.
        await self._redis.set(self._owner_key(conversation_id), visitor_id, ex=LOG_TTL_S, nx=True)

    async def send(self, visitor: Visitor, message_id: Any, body: Any, *, limit: int | None = None) -> Sent:
        """Log and publish a line; ``limit``: lines per minute for this visitor (RateLimited)."""
        try:
            if not isinstance(message_id, str) or not MESSAGE_ID_RE.fullmatch(message_id):
                raise Invalid("message_id must be 8 to 64 letters, digits, '-' or '_' (use a UUID)")
            if not isinstance(body, str) or not body.strip(BLANKS):
                raise Invalid("body must be a non-empty string")
            if len(body) > self._settings.max_message_chars:
                raise TooLarge(f"message is {len(body)} characters; the limit is {self._settings.max_message_chars}")
        except (Invalid, TooLarge):
            if limit is not None:  # a refused line counts against the limit too
                await self.limits.hit("msg", visitor.visitor_id, limit, "messages")
            raise
        sent_at = now_ms()
        entry = {**chat_line("visitor", body, sent_at), "message_id": message_id}
        page_url = visitor.session.get("page_url") or ""
        # Limit, ensure, append and the unconfirmed mark in one round trip (lines.py).
        written = await self.lines.write(
            visitor_id=visitor.visitor_id,
            known_conversation=visitor.conversation_id,
            new_conversation=uuid.uuid4().hex,
            message_id=message_id,
            entry_json=json.dumps(entry),
            mark_tail=Unconfirmed("", message_id, visitor.site_id, visitor.visitor_id, page_url).tail(),
            now=time.time(),
            limit=limit,
        )
        if written is None:
            raise SessionExpired("the visit expired: start a session again")
        conversation_id = written.conversation_id
        in_flight = Unconfirmed(conversation_id, message_id, visitor.site_id, visitor.visitor_id, page_url)
        seq, created = written.seq, written.appended
        echo = {**entry, "seq": seq} if created and not written.watched else None
        if not seq:  # the log needs a floor after a Redis restart: the log's own path
            appended = await self.log.append(conversation_id, message_id, entry, new_conversation=written.created)
            seq, created, echo = appended.seq, appended.created, None
        if not written.marked:
            await self.unconfirmed.mark(in_flight)
        if not created:
            # The first attempt's time stays the message's time.
            first = await self.log.after(conversation_id, seq - 1, 1)
            sent_at = int(first[0]["sent_at_ms"]) if first else sent_at
        message = codec.ChatMessage(
            message_id=message_id,
            conversation_id=conversation_id,
            site_id=visitor.site_id,
            visitor_id=visitor.visitor_id,
            sender=codec.SenderKind.VISITOR,
            body=body,
            sent_at_ms=sent_at,
            seq=seq,
            page_url=page_url or None,
        )
        # Republished on a retry too: the first attempt may have died between the
        # append and the confirm; consumers dedupe by message id. Marked until the
        # confirm, so a line whose widget is gone is published again by the sweep.
        await self._bus.publish(topology.VISITOR, f"{visitor.site_id}.message", message)
        self.unconfirmed.confirmed(in_flight)  # unmarked in the background, batched
        # Behind a load balancer the visitor's WebSocket or long-poll may be held by
        # another frontend (the session names it): wake it there, as the gateway does
        # for an operator's line, or it would see this line only at its next wake-up.
        elsewhere = visitor.session.get("frontend_id")
        if elsewhere and elsewhere != self._settings.frontend_id:
            delivery = codec.VisitorDelivery(
                visitor_id=visitor.visitor_id, site_id=visitor.site_id, conversation_id=conversation_id, message=message
            )
            await self._bus.publish(topology.DELIVER, elsewhere, delivery, mandatory=False)
        return Sent(conversation_id, seq, not created, echo)

    async def typing(self, visitor: Visitor, typing: Any) -> None:
        if not isinstance(typing, bool):
            raise Invalid("typing must be true or false")
        kind = codec.VisitorEventKind.TYPING if typing else codec.VisitorEventKind.STOPPED_TYPING
        await self._event(visitor, kind)

    async def identify(self, visitor: Visitor, details: dict[str, Any]) -> dict[str, str]:
        known: dict[str, str] = {}
        for name in ("name", "email", "phone"):
            if name not in details:
                continue
            value = details[name]
            if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
                raise Invalid(f"{name} must be text of at most {MAX_FIELD_CHARS} characters")
            if name == "email" and not EMAIL_RE.fullmatch(value.strip(BLANKS)):
                raise Invalid(f"{value!r} does not look like an email address")
            known[name] = value.strip(BLANKS)
        if not known:
            raise Invalid("give at least one of name, email, phone")
        await self.sessions.save(visitor.visitor_id, visitor.site_id, dict(known))
        await self._event(visitor, codec.VisitorEventKind.IDENTIFIED, **known)
        return known

    async def end(self, visitor: Visitor) -> bool:
        """Ask for the conversation to close (the worker's closer does it); False if none is open."""
        if not visitor.conversation_id:
            return False
        await self._event(visitor, codec.VisitorEventKind.ENDED_CHAT)
        return True

    async def _event(self, visitor: Visitor, kind: int, **details: str) -> None:
        event = self._event_struct(visitor, kind, **details)
        await self._bus.publish(topology.VISITOR, f"{visitor.site_id}.event", event)

    @staticmethod
    def _event_struct(visitor: Visitor, kind: int, **details: str) -> codec.VisitorEvent:
        return codec.VisitorEvent(
            visitor_id=visitor.visitor_id,
            site_id=visitor.site_id,
            kind=kind,
            at_ms=now_ms(),
            conversation_id=visitor.conversation_id or None,
            **details,
        )

    # --- offline form ----------------------------------------------------------------------
    async def leave_offline_message(
        self, site_id: str, visitor: Visitor | None, form: dict[str, Any], page_url: str
    ) -> str:
        message_id, name, email, body = (form.get(k) for k in ("message_id", "name", "email", "body"))
        if not isinstance(message_id, str) or not MESSAGE_ID_RE.fullmatch(message_id):
            raise Invalid("message_id must be 8 to 64 letters, digits, '-' or '_' (use a UUID)")
        if not isinstance(name, str) or not name.strip(BLANKS) or len(name) > MAX_FIELD_CHARS:
            raise Invalid(f"name must be given, at most {MAX_FIELD_CHARS} characters")
        if not isinstance(email, str) or not EMAIL_RE.fullmatch(email.strip(BLANKS)):
            raise Invalid("email must be an address like you@example.org, so the site can answer you")
        if not isinstance(body, str) or not body.strip(BLANKS):
            raise Invalid("body must be a non-empty message")
        if len(body) > self._settings.max_message_chars:
            raise TooLarge(f"message is {len(body)} characters; the limit is {self._settings.max_message_chars}")
        offline = codec.OfflineMessage(
            message_id=message_id,
            site_id=site_id,
            visitor_id=visitor.visitor_id if visitor else self.sessions.new_visitor_id(),
            name=name.strip(BLANKS),
            email=email.strip(BLANKS),
            body=body,
            sent_at_ms=now_ms(),
            page_url=clip(page_url, MAX_URL_CHARS) or None,
        )
        await self._bus.publish(topology.VISITOR, f"{site_id}.offline", offline)
        return message_id
