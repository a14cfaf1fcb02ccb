"""What a visitor can do, knowing nothing of HTTP: the frontend's domain code.

Every method publishes on RabbitMQ (confirmed) before it returns, so "ok" to the
widget means the line is in the log and on its way; a retry with the same message
id appends nothing and republishes the same id (consumers dedupe by it).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from libs.common import codec, topology
from libs.common.messaging import BrokerUnavailable, Bus
from libs.common.settings import Settings
from libs.common.state.conversations import LOG_TTL_S, ConversationLog, FloorSource, chat_line
from libs.common.state.sessions import VisitorSessions
from services.rpc_frontend.departures import Departures
from services.rpc_frontend.unconfirmed import Unconfirmed, UnconfirmedLines

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

# KEYS[1] = session hash; ARGV[1] = new conversation id. Sets conversation_id only if
# the session has none, so two tabs sending a first line at once share one conversation.
# Returns {conversation id, 1 if it was created now else 0}, or nil if the session is
# gone (expired): a bare HSET would leave a session hash without a TTL behind.
_ENSURE_CONVERSATION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local current = redis.call('HGET', KEYS[1], 'conversation_id')
if current and current ~= '' then return {current, 0} end
redis.call('HSET', KEYS[1], 'conversation_id', ARGV[1])
return {ARGV[1], 1}
"""


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
        self._ensure = redis.register_script(_ENSURE_CONVERSATION)
        self.departures = Departures(redis, bus, settings)

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

    async def start(self, site_id: str, token: str, page: dict[str, Any], user_agent: str) -> tuple[str, Visitor]:
        """Start or resume a visit and record the page view. Returns (token, visitor)."""
        visitor_id = self.sessions.visitor_of(token) if token else None
        session = await self.sessions.get(visitor_id) if visitor_id else None
        if session is not None and session.get("site_id") != site_id:
            visitor_id, session = None, None  # a token of another site: a new visitor here
        visitor_id = visitor_id or self.sessions.new_visitor_id()
        url, title, referrer = (
            clip(page.get("url"), MAX_URL_CHARS),
            clip(page.get("title")),
            clip(page.get("referrer"), MAX_URL_CHARS),
        )
        fields: dict[str, str | int] = {
            "frontend_id": self._settings.frontend_id,
            "user_agent": clip(user_agent, MAX_USER_AGENT_CHARS),
            "pages": int((session or {}).get("pages", "0") or 0) + (1 if url else 0),
        }
        if url:
            fields.update(page_url=url, page_title=title, referrer=referrer)
        await self.sessions.save(visitor_id, site_id, fields)
        await self.departures.seen(site_id, visitor_id)
        saved = await self.sessions.get(visitor_id) or {}
        visitor = Visitor(visitor_id, site_id, saved)
        if session is None:
            await self._event(visitor, codec.VisitorEventKind.ARRIVED)
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
            await self._bus.publish(topology.VISITOR, f"{site_id}.pageview", view)
        return self.sessions.token_for(visitor_id), visitor

    async def attach(self, visitor: Visitor) -> None:
        """Record that this instance holds the visitor's connection now (deliveries come here)."""
        await self.sessions.save(visitor.visitor_id, visitor.site_id, {"frontend_id": self._settings.frontend_id})
        await self.departures.seen(visitor.site_id, visitor.visitor_id)

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

    async def _conversation_for(self, visitor: Visitor) -> tuple[str, bool]:
        """The visitor's open conversation id, and whether it was created just now."""
        # The session key is VisitorSessions' own ("visitor:<id>"); the Lua script must
        # name it to set the field atomically.
        session_key = self._settings.redis_key("visitor", visitor.visitor_id)
        ensured = await self._ensure(keys=[session_key], args=[uuid.uuid4().hex])
        if ensured is None:
            raise SessionExpired("the visit expired: start a session again")
        conversation_id, created = ensured
        if created or conversation_id != visitor.conversation_id:
            await self.claim(visitor.visitor_id, str(conversation_id))
        return str(conversation_id), bool(created)

    async def send(self, visitor: Visitor, message_id: Any, body: Any) -> Sent:
        if not isinstance(message_id, str) or not MESSAGE_ID_RE.fullmatch(message_id):
            raise Invalid("message_id must be 8 to 64 letters, digits, '-' or '_' (use a UUID)")
        if not isinstance(body, str) or not body.strip(BLANKS):
            raise Invalid("body must be a non-empty string")
        if len(body) > self._settings.max_message_chars:
            raise TooLarge(f"message is {len(body)} characters; the limit is {self._settings.max_message_chars}")
        conversation_id, new_conversation = await self._conversation_for(visitor)
        sent_at = now_ms()
        entry = chat_line("visitor", body, sent_at)
        appended = await self.log.append(conversation_id, message_id, entry, new_conversation=new_conversation)
        if not appended.created:
            # The first attempt's time stays the message's time.
            first = await self.log.after(conversation_id, appended.seq - 1, 1)
            sent_at = int(first[0]["sent_at_ms"]) if first else sent_at
        message = codec.ChatMessage(
            message_id=message_id,
            conversation_id=conversation_id,
            site_id=visitor.site_id,
            visitor_id=visitor.visitor_id,
            sender=codec.SenderKind.VISITOR,
            body=body,
            sent_at_ms=sent_at,
            seq=appended.seq,
            page_url=visitor.session.get("page_url") or None,
        )
        # Republished on a retry too: the first attempt may have died between the
        # append and the confirm; consumers dedupe by message id. Marked until the
        # confirm, so a line whose widget is gone is published again by the sweep.
        in_flight = Unconfirmed(
            conversation_id, message_id, visitor.site_id, visitor.visitor_id, message.page_url or ""
        )
        await self.unconfirmed.mark(in_flight)
        await self._bus.publish(topology.VISITOR, f"{visitor.site_id}.message", message)
        await self.unconfirmed.confirmed(in_flight)
        # Behind a load balancer the visitor's WebSocket or long-poll may be held by
        # another frontend (the session names it): wake it there, as the gateway does
        # for an operator's line, or it would see this line only at its next wake-up.
        elsewhere = visitor.session.get("frontend_id")
        if elsewhere and elsewhere != self._settings.frontend_id:
            delivery = codec.VisitorDelivery(
                visitor_id=visitor.visitor_id, site_id=visitor.site_id, conversation_id=conversation_id, message=message
            )
            await self._bus.publish(topology.DELIVER, elsewhere, delivery, mandatory=False)
        return Sent(conversation_id, appended.seq, not appended.created)

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
        event = codec.VisitorEvent(
            visitor_id=visitor.visitor_id,
            site_id=visitor.site_id,
            kind=kind,
            at_ms=now_ms(),
            conversation_id=visitor.conversation_id or None,
            **details,
        )
        await self._bus.publish(topology.VISITOR, f"{visitor.site_id}.event", event)

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
