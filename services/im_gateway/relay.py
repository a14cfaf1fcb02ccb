"""Chat lines both ways, and what visitors do that operators should see.

Visitor → operator: a ChatMessage from habla.visitor goes, from the visitor's JID, to
the conversation's operator (assigned least-busy on its first line, then sticky).
Operator → visitor: a line to the visitor's JID is appended to the conversation log,
published on habla.operator for the archive, then handed to the visitor's frontend on
habla.deliver. Operators may also start a chat by writing to a visitor's JID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar

from libs.common import codec
from libs.common.state.conversations import chat_line, receipt_line
from libs.common.xmlsafe import one_line
from services.im_gateway import voice
from services.im_gateway.desk import Desk
from services.im_gateway.events import now_ms
from services.im_gateway.outbox import XmppUnavailable
from services.im_gateway.routing import Conversation, LineContext
from services.im_gateway.visitors import page_status

log = logging.getLogger(__name__)

T = TypeVar("T")

# Retrying a line while Redis or the broker is away: first after 0.2 s (a dropped
# connection is usually back at once), doubling to 2 s so an outage costs a few
# attempts per line, within HABLA_GATEWAY_LINE_RETRY_S.
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 2.0


class LineNotRelayed(Exception):
    """An operator line could not be logged or published in time: bounce it."""


async def persistently(what: str, work: Callable[[], Awaitable[T]], deadline: float) -> T:
    """``work()`` until it succeeds; LineNotRelayed once ``deadline`` (monotonic) is near.

    Only for work that may be repeated: the log append is idempotent by message id,
    the archive by message id, the widget by sequence number."""
    delay = RETRY_FIRST_S
    while True:
        try:
            return await work()
        except (asyncio.CancelledError, XmppUnavailable):
            raise  # a stream that is down cannot take a bounce either
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                raise LineNotRelayed(f"{what} failed: {exc.__class__.__name__}: {exc}") from exc
            log.warning("%s failed; retrying", what, extra={"error": f"{exc.__class__.__name__}: {exc}"})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


# Operator message ids derive from (operator, stanza id): a client that resends a line
# with the same stanza id (after an error bounce) is stored once.
_STANZA_NS = uuid.UUID("6f6c6b1e-7a0e-4d4e-9b8f-68616261a001")


def operator_message_id(operator: str, stanza_id: str | None) -> str:
    """The log's message id of an operator's line: from (operator, stanza id), so a
    resend is stored once; random for a client that sends no id."""
    return uuid.uuid5(_STANZA_NS, f"{operator}/{stanza_id}").hex if stanza_id else uuid.uuid4().hex


async def route_new(
    desk: Desk, conversation_id: str, site_id: str, visitor_id: str, exclude: Iterable[str] = ()
) -> Conversation:
    """Give a new conversation to the least busy available operator, else offer it."""
    excluded = set(exclude) | await desk.routing.forced_away()
    available = [
        op
        for op in await desk.availability.available_operators(site_id)
        if op not in excluded and desk.operators.is_operator(op, site_id)
    ]
    chosen = await desk.routing.choose(available)
    desk.dirty_sites.add(site_id)
    if chosen:
        log.info("conversation assigned", extra={"conversation": conversation_id, "operator": chosen})
        return await desk.routing.assign(conversation_id, site_id, visitor_id, chosen)
    # Nobody available for routing: offer it to whoever is connected at all (away,
    # dnd), else to every operator of the site; the first to answer takes it.
    fallback = [op for op in desk.availability.online_operators(site_id) if op not in exclude]
    fallback = fallback or [op for op in desk.operators.operators_of(site_id) if op not in exclude]
    log.info("conversation offered", extra={"conversation": conversation_id, "operators": ",".join(fallback)})
    return await desk.routing.offer(conversation_id, site_id, visitor_id, fallback)


async def visitor_line(desk: Desk, message: Any, route: tuple[Conversation | None, bool] | None = None) -> int:
    """Hand a visitor's line to the conversation's operator(s); returns how many got it.

    ``route``: Routing.for_line's answer if the caller has just read it (with the
    other lines of a batch)."""
    if route is None:
        route = await desk.routing.for_line(message.conversation_id, message.site_id, message.visitor_id)
    conversation, blocked = route
    if blocked:
        return 0
    if conversation is None:
        conversation = await route_new(desk, message.conversation_id, message.site_id, message.visitor_id)
    jid = await desk.names.jid_of(message.visitor_id)
    shown = all((operator, message.visitor_id) in desk.shown for operator in conversation.recipients)
    status = "" if shown else await desk.visitor_status(message.visitor_id)
    # The caller confirms with the server (ping barrier) before marking it delivered.
    for operator in conversation.recipients:
        if (operator, message.visitor_id) not in desk.shown:
            desk.outbox.presence(jid, operator, show="chat", status=status)
            desk.remember_shown(operator, message.visitor_id)
        # A receipt from the operator's client becomes the visitor's delivery tick
        # (operator_received); <active/> ends the "typing" the client may show.
        desk.outbox.chat(
            jid,
            operator,
            voice.from_visitor(message.body),
            stanza_id=message.message_id,
            request_receipt=True,
            state="active",
        )
    return len(conversation.recipients)


async def operator_line(
    desk: Desk,
    operator: str,
    visitor_id: str,
    session: dict[str, str],
    body: str,
    stanza_id: str,
    on_committed: Callable[[], None] | None = None,
    replaces: str | None = None,
    on_delayed: Callable[[str], None] | None = None,
    deadline: float | None = None,
    context: LineContext | None = None,
) -> str | None:
    """Relay an operator's line to the visitor. Returns a sentence for the operator if refused.

    The log append happens here, in arrival order (it numbers the line); publishing it
    for the archive and the visitor's frontend (two broker confirms) runs in the
    background so the next line need not wait, and ``on_committed`` (the XEP-0184
    receipt) fires only once both are confirmed. If they cannot be confirmed by
    ``deadline`` (monotonic; default HABLA_GATEWAY_LINE_RETRY_S from now),
    ``on_delayed`` gets the reason, once, and the publishes go on until they are
    confirmed: the line is already in the log the visitor reads, so a bounce would
    make the operator send it again and the visitor see it twice.

    ``context``: the session's conversation and blocked flag as just read with the
    session (Routing.line_context, which also lifted the operator's force-away), so
    they need no round trip of their own here; and the line itself if the context
    appended it (``logged``: only for a conversation the operator has answered
    already, the one case with nothing to decide before the append).
    """
    if deadline is None:
        deadline = time.monotonic() + desk.settings.gateway_line_retry_s
    site_id = session["site_id"]
    if len(body) > desk.settings.max_message_chars:
        return f"That line is {len(body)} characters long; visitors accept at most {desk.settings.max_message_chars}."
    conversation_id = session.get("conversation_id", "")
    if context is not None and context.session is session:
        conversation, blocked = context.conversation, context.blocked
    else:
        conversation, blocked = await desk.routing.for_line(conversation_id, site_id, visitor_id)
    if blocked:
        return "This visitor is blocked."
    if conversation is None:
        # Operator-initiated chat (or one this gateway lost track of): the operator
        # who writes first owns it; the session tells the widget to open.
        if not conversation_id:
            conversation_id = uuid.uuid4().hex
            await desk.sessions.save(visitor_id, site_id, {"conversation_id": conversation_id})
        conversation = await desk.routing.assign(conversation_id, site_id, visitor_id, operator, answered=True)
        first = True
        desk.dirty_sites.add(site_id)
    elif conversation.operator and conversation.operator != operator:
        return f"{conversation.operator} is handling this chat; ask them to !transfer it to you."
    elif conversation.operator == operator and conversation.answered:
        first = False
    else:
        first = await desk.routing.answered(conversation, operator)
        jid = await desk.names.jid_of(visitor_id)
        for other in conversation.offered:
            if other != operator:
                _info_quietly(desk, jid, other, f"{desk.operators.display_name(operator, site_id)} took this chat.")
    logged = context.logged if context is not None and context.session is session else None
    if logged is not None and not first and not replaces:
        # Appended with the context (Routing.line_context): the same conversation, id,
        # time and name as below, in the same round trip as the session.
        name, message_id, sent_at, corrected = logged.operator_name, logged.message_id, logged.sent_at_ms, None
        seq = logged.seq
    else:
        name = desk.operators.display_name(operator, site_id)
        message_id = logged.message_id if logged is not None else operator_message_id(operator, stanza_id)
        corrected = await _corrected_line(desk, conversation_id, operator, replaces) if replaces else None
        sent_at = now_ms()
        appended = await desk.log.append(
            conversation_id,
            message_id,
            chat_line("operator", body, sent_at, name, replaces=corrected),
        )
        seq = appended.seq
    chat = codec.ChatMessage(
        message_id=message_id,
        conversation_id=conversation_id,
        site_id=site_id,
        visitor_id=visitor_id,
        sender=codec.SenderKind.OPERATOR,
        operator_jid=operator,
        body=body,
        sent_at_ms=sent_at,
        seq=seq,
        operator_name=name,
        replaces_message_id=corrected,
    )

    away_lifted = context is not None and context.session is session

    async def publish() -> None:
        # Published even when the log already had it (a resend): the archive dedupes by
        # message id, and a crash between append and publish is healed by the resend.
        # The publishes go out in this order with their confirms awaited together (one
        # wait for the broker, not two or three); a failure retries them all (the
        # archive dedupes by message id, the widget by seq).
        work: list[Awaitable[Any]] = [] if away_lifted else [desk.routing.clear_away(operator)]
        work.append(desk.events.operator_line(chat))
        work.append(
            desk.events.deliver(
                session.get("frontend_id", ""),
                codec.VisitorDelivery(
                    visitor_id=visitor_id, site_id=site_id, conversation_id=conversation_id, message=chat
                ),
            )
        )
        if first:
            work.append(
                desk.events.action(
                    site_id=site_id,
                    conversation_id=conversation_id,
                    visitor_id=visitor_id,
                    operator=operator,
                    action="joined",
                    value=name,
                )
            )
        results = await asyncio.gather(*work, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def announce() -> None:
        try:
            await persistently("publishing an operator line", publish, deadline)
        except LineNotRelayed as exc:
            log.error("operator line delayed", extra={"operator": operator, "reason": str(exc)})
            if on_delayed is not None:
                on_delayed(str(exc))
            # No deadline now: the broker's outage is the only thing this waits for
            # (the stop of the gateway cancels it; the line stays unreceipted then).
            await persistently("publishing a delayed operator line", publish, math.inf)
        if on_committed is not None:
            on_committed()

    await desk.in_background(announce())
    return None


async def _corrected_line(desk: Desk, conversation_id: str, operator: str, stanza_id: str) -> str | None:
    """The message id of the operator's own line that an XEP-0308 correction names.

    Always the first version: a correction of a correction (clients differ in which
    id they name) edits the same line. None if the operator wrote no such line in
    this conversation: the correction is then shown as a line of its own.
    """
    candidate = operator_message_id(operator, stanza_id)  # only this operator's ids
    found = await desk.log.entry_of(conversation_id, candidate)
    if found is None:
        return None
    entry = found[1]
    if entry.get("sender") != "operator" or entry.get("kind") != "message":
        return None
    return str(entry.get("replaces") or candidate)


async def operator_typing(
    desk: Desk,
    operator: str,
    visitor_id: str,
    session: dict[str, str],
    state: str,
    conversation: Conversation | Literal["unknown"] | None = "unknown",
) -> None:
    """XEP-0085 from the operator → typing / stopped_typing for the visitor's widget.

    Any client's form counts: a bare or full JID, type chat or normal, with or without
    a body (a line's <active/> needs nothing: the line itself clears "typing"). Only
    "composing" means typing; paused, active, inactive and gone all mean not typing
    (XEP-0085 §5.1). An operator offered the chat may type before taking it.
    ``conversation``: the session's, if the caller has just read it.
    """
    if conversation == "unknown":
        conversation = await desk.routing.get(session.get("conversation_id", ""))
    if conversation is None or operator not in conversation.recipients:
        return
    action = "typing" if state == "composing" else "stopped_typing"
    struct = await desk.events.action(
        site_id=conversation.site_id,
        conversation_id=conversation.conversation_id,
        visitor_id=visitor_id,
        operator=operator,
        action=action,
    )
    await desk.events.deliver(
        session.get("frontend_id", ""),
        codec.VisitorDelivery(
            visitor_id=visitor_id,
            site_id=conversation.site_id,
            conversation_id=conversation.conversation_id,
            action=struct,
        ),
    )


async def operator_received(
    desk: Desk,
    operator: str,
    visitor_id: str,
    session: dict[str, str],
    message_id: str,
    conversation: Conversation | Literal["unknown"] | None = "unknown",
) -> None:
    """XEP-0184 from the operator's client: the visitor's line reached them.

    Recorded in the conversation log (as a "receipt" entry, once per line), so the
    widget's tick survives reloads and reconnects like every other entry; only a
    receipt for one of this visitor's lines, from an operator of the chat, counts.
    ``conversation``: the session's, if the caller has just read it.
    """
    if conversation == "unknown":
        conversation = await desk.routing.get(session.get("conversation_id", ""))
    if conversation is None or operator not in conversation.recipients:
        return
    conversation_id = conversation.conversation_id
    found = await desk.log.entry_of(conversation_id, message_id)
    if found is None:
        return
    original = found[1]
    if original.get("sender") != "visitor" or original.get("kind") != "message":
        return
    appended = await desk.log.append(conversation_id, f"rcpt-{message_id}", receipt_line(message_id, now_ms()))
    if not appended.created:
        return  # a second resource (or a resend) acknowledged it already
    await desk.events.deliver(
        session.get("frontend_id", ""),
        codec.VisitorDelivery(
            visitor_id=visitor_id,
            site_id=conversation.site_id,
            conversation_id=conversation_id,
            action=codec.OperatorAction(
                action_id=uuid.uuid4().hex,
                conversation_id=conversation_id,
                site_id=conversation.site_id,
                visitor_id=visitor_id,
                operator_jid=operator,
                action="received",
                value=message_id,
                at_ms=now_ms(),
            ),
        ),
    )


def queue_page_view(desk: Desk, pipe: Any, view: Any, message_id: str) -> None:
    """``page_view``'s Redis work as one command on the batch's pipeline (the consumer's
    prefetch, services.im_gateway.consumers): the page recorded and the followers and the
    conversation read, unless the message is marked delivered; its answer is what
    ``page_view`` takes as ``early``."""
    reads = [f"s:{desk.follows.followers_key(view.visitor_id)}"]
    if view.conversation_id:
        reads.append(f"h:{desk.routing.conversation_key(view.conversation_id)}")
    desk.pages.queue_add_unless(
        pipe, desk.delivered.key(message_id), view.visitor_id, view.url, view.title or "", view.viewed_at_ms, reads
    )


async def page_view(desk: Desk, view: Any, early: list[Any] | None = None) -> None:
    """A page view becomes a (coalesced) presence update for whoever watches the visitor.

    ``early``: ``queue_page_view``'s answer, if the consumer's prefetch did the Redis
    work already (with the batch's other reads: no round trip of its own). Else the
    page's record, the visitor's followers and the conversation go in one pipelined
    round trip (they were three, one after another)."""
    desk.dirty_sites.add(view.site_id)
    if early is None:
        async with desk.routing.pipeline() as pipe:
            added = desk.pages.queue_add(pipe, view.visitor_id, view.url, view.title or "", view.viewed_at_ms)
            desk.follows.queue_followers(pipe, view.visitor_id)
            if view.conversation_id:
                desk.routing.queue_get(pipe, view.conversation_id)
            early = (await pipe.execute())[added:]
    watchers = {str(op) for op in early[0]}
    conversation = desk.routing.from_get(view.conversation_id, early[1]) if view.conversation_id else None
    if conversation:
        watchers.update(conversation.recipients)
    if not watchers:
        return
    jid = await desk.names.jid_of(view.visitor_id)
    status = page_status(view.url, view.title or "")
    for operator in watchers:
        desk.coalescer.update(operator, jid, show="chat" if conversation else None, status=status)


async def visitor_event(desk: Desk, event: Any) -> None:
    """Typing, identified, ended chat, arrived, left.

    The visitor's JID (a name claimed on first use: a round trip for a new visitor) is
    looked up only where a stanza goes out: an arrival sends none."""
    kind = event.kind
    desk.dirty_sites.add(event.site_id)
    conversation = await desk.routing.get(event.conversation_id or "")
    recipients = conversation.recipients if conversation else ()
    if kind in (codec.VisitorEventKind.TYPING, codec.VisitorEventKind.STOPPED_TYPING):
        state = "composing" if kind == codec.VisitorEventKind.TYPING else "paused"
        for operator in recipients:
            with contextlib.suppress(XmppUnavailable):  # typing is momentary: not worth a redelivery
                desk.outbox.chat_state(await desk.names.jid_of(event.visitor_id), operator, state)
    elif kind == codec.VisitorEventKind.ENDED_CHAT and conversation:
        jid = await desk.names.jid_of(event.visitor_id)
        await desk.routing.close(conversation.conversation_id)
        await desk.hide_visitor(conversation)
        for operator in conversation.recipients:
            with contextlib.suppress(XmppUnavailable):
                desk.outbox.chat_state(jid, operator, "gone")  # XEP-0085: the visitor left the chat
            desk.info(jid, operator, "The visitor ended the chat; the transcript goes to the site owner.")
    elif kind == codec.VisitorEventKind.IDENTIFIED and conversation:
        jid = await desk.names.jid_of(event.visitor_id)
        known = ", ".join(one_line(v) for v in (event.name, event.email, event.phone) if v)
        for operator in conversation.recipients:
            desk.info(jid, operator, f"The visitor introduced themselves: {known}")
    elif kind == codec.VisitorEventKind.LEFT:
        # Out of !who, the bot's count and operators' rosters (services.im_gateway.rosters).
        await desk.sessions.left(event.site_id, event.visitor_id)
        watchers = await desk.follows.followers(event.visitor_id) | set(recipients)
        if watchers:
            jid = await desk.names.jid_of(event.visitor_id)
            for operator in watchers:
                desk.coalescer.update(operator, jid, kind="unavailable", status="Left the site")


def _info_quietly(desk: Desk, sender: str, operator: str, text: str) -> None:
    try:
        desk.info(sender, operator, text)
    except XmppUnavailable:
        log.warning("could not tell an operator", extra={"operator": operator, "text": text})
