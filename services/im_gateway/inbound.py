"""What arrives over XMPP, handled in arrival order.

slixmpp runs each async handler as its own task, which could reorder two quick lines
of one operator; stanzas are therefore queued and handled one at a time. Anything
from a JID that is not an operator of the site concerned gets an XMPP error and
changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from slixmpp.stanza import Message, Presence
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from libs.common.state.conversations import chat_line
from services.im_gateway import commands, metrics, relay
from services.im_gateway.component import CHATSTATES_NS, RECEIPTS_NS, GatewayComponent, on
from services.im_gateway.desk import Desk
from services.im_gateway.disco import CORRECTION_NS
from services.im_gateway.events import now_ms
from services.im_gateway.lanes import Lanes
from services.im_gateway.outbox import XmppUnavailable
from services.im_gateway.roster import Roster
from services.im_gateway.rosters import Rosters
from services.im_gateway.routing import OperatorLine
from services.im_gateway.sitebot import SiteBot

log = logging.getLogger(__name__)

BOUNCED = (
    "This line did not reach the visitor: Habla could not store it (its database or message broker "
    "is unavailable). Please send it again in a moment."
)

DELAYED = (
    "This line is saved in the chat but not yet confirmed: Habla's message broker is not answering. "
    "It reaches the visitor as soon as the broker is back, with a delivery receipt then; no need to send it again."
)

HANDING_OVER = "This line did not reach the visitor: Habla is moving this chat to another server. Please send it again."

CHAT_STATES = ("active", "composing", "paused", "inactive", "gone")
# Bounded so a flood cannot exhaust memory; at ~1 ms a stanza this is seconds of backlog.
QUEUE_SIZE = 10_000
# What an operator's client shows for a visitor contact whose visit is over.
VISIT_ENDED = "This visit has ended."
# Conversations handled at once (each waits mostly on Redis and RabbitMQ round trips).
LANES = 64


class Inbound:
    def __init__(self, component: GatewayComponent, desk: Desk, roster: Roster, bot: SiteBot, rosters: Rosters) -> None:
        self._component = component
        self._desk = desk
        self._roster = roster
        self._rosters = rosters
        self._bot = bot
        self._queue: asyncio.Queue[Message | Presence] = asyncio.Queue(QUEUE_SIZE)
        self._seen_online: set[str] = set()
        self._lanes = Lanes(LANES)  # operators shown the bot's presence once
        self._handling = 0  # stanzas taken off the queue, not yet handled
        self._refusing = False  # stopping: new lines get an error, not silence
        on(component, "message", self._enqueue)
        on(component, "chatstate", self._on_chat_state)
        # Receipts come bodiless, so slixmpp's "message" event never sees them.
        component.register_handler(
            Callback(
                "habla receipts",
                MatchXPath(f"{{{component.default_ns}}}message/{{{RECEIPTS_NS}}}received"),
                lambda stanza: self._on_chat_state(stanza),  # type: ignore[arg-type]
            )
        )
        on(component, "presence", self._enqueue)

    def _enqueue(self, stanza: Message | Presence) -> None:
        if self._refusing and self._component.ready.is_set():
            # Stopping (or handing the domain over): a line now could be neither stored
            # before the stream closes nor receipted after. An error the client shows
            # against the line, never silence; the next owner takes it in a moment.
            # Presence, chat states and receipts are dropped: the next owner's roster
            # sync and the client's next ones rebuild them.
            if isinstance(stanza, Message) and stanza["body"] and stanza["type"] not in ("error", "groupchat"):
                metrics.OPERATOR_LINES_BOUNCED.inc()
                self._component.error(stanza, "service-unavailable", HANDING_OVER, "wait")
            return
        # (Refusing, stream closing: the server routed it to us before it saw our close,
        # and no error can go back any more. Handled as usual -- stored and published,
        # the visitor gets it -- only its receipt is lost.)
        try:
            self._queue.put_nowait(stanza)
        except asyncio.QueueFull:
            self._component.error(stanza, "resource-constraint", "The gateway is overloaded; try again.", "wait")

    def _on_chat_state(self, msg: Message) -> None:
        """Bodiless messages (chat states, receipts); with a body they arrive as "message".
        One with both a chat state and a receipt is queued twice: both effects are
        idempotent."""
        if not msg["body"]:
            self._enqueue(msg)

    async def run(self) -> None:
        while True:
            stanza = await self._queue.get()
            self._handling += 1
            sender = stanza["from"].bare
            # An operator's lines to one visitor stay in order; presence per operator.
            key = f"{sender}>{stanza['to'].bare}" if isinstance(stanza, Message) else sender
            try:
                await self._lanes.submit(key, lambda s=stanza: self._handle(s))  # type: ignore[misc]
            finally:
                self._handling -= 1

    async def quiesce(self, within: float, *, refuse: bool = True) -> None:
        """Graceful stop, stream still up: finish the lines in hand (stored, published,
        receipted), then one barrier ping so the server has every receipt and error
        before the stream closes. New lines are refused (with an error) meanwhile,
        unless the server holds them for the next owner (``refuse=False``: it agreed
        to hold, GatewayComponent.ask_hold, so none can arrive any more)."""
        self._refusing = refuse
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        await self.caught_up(within)
        try:
            await asyncio.wait_for(self._component.confirm(), max(0.1, deadline - loop.time()))
        except (XmppUnavailable, TimeoutError):
            log.warning("stopping: the last receipts may not have reached the server")

    async def caught_up(self, within: float) -> None:
        """Wait (at most ``within`` s) until every stanza taken in is handled and what
        that started in the background (publishing, receipts) is done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        await self.drain(within)
        if self._desk.background:  # publishing and receipting run in the background
            await asyncio.wait(set(self._desk.background), timeout=max(0.01, deadline - loop.time()))

    async def drain(self, within: float) -> None:
        """Wait (at most ``within`` s) until every stanza taken in is handled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            if not (self._queue.qsize() or self._handling or self._lanes.busy):
                return
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self._lanes.close()

    async def _handle(self, stanza: Message | Presence) -> None:
        try:
            if isinstance(stanza, Message):
                await self._message_persistently(stanza)
            else:
                await self.presence(stanza)
        except XmppUnavailable:
            log.warning("stanza not answered: XMPP stream down", extra={"from": str(stanza["from"])})
        except Exception:
            log.exception("stanza handling failed", extra={"from": str(stanza["from"])})

    async def _message_persistently(self, msg: Message) -> None:
        """Redis or the broker away: an operator's message is retried up to
        HABLA_GATEWAY_LINE_RETRY_S (every step is idempotent by message id), then
        bounced with an error the client shows against that line."""
        deadline = time.monotonic() + self._desk.settings.gateway_line_retry_s
        try:
            await relay.persistently("handling an operator's message", lambda: self.message(msg, deadline), deadline)
        except relay.LineNotRelayed as exc:
            log.error("operator message bounced", extra={"from": str(msg["from"]), "reason": str(exc)})
            if msg["body"]:
                metrics.OPERATOR_LINES_BOUNCED.inc()
                self._component.error(msg, "internal-server-error", BOUNCED, "wait")

    def _refuse(self, stanza: Message | Presence, text: str) -> None:
        metrics.STRANGERS.inc()
        log.info("stranger refused", extra={"from": str(stanza["from"]), "to": str(stanza["to"])})
        self._component.error(stanza, "forbidden", text)

    # --- messages -------------------------------------------------------------------
    async def message(self, msg: Message, deadline: float | None = None) -> None:
        if msg["type"] in ("error", "groupchat", "headline"):
            return
        sender = msg["from"].bare.lower()
        local = msg["to"].user
        body = msg["body"]
        site_id = self._desk.site_of_bot(local) if local else None
        if site_id is not None:
            await self._to_bot(msg, sender, site_id, body)
            return
        sites = self._desk.operators.sites_of(sender)
        if not sites:
            self._refuse(msg, "Only a site's operators may write here.")
            return
        visitor_id = await self._desk.names.visitor_of(local) if local else None
        parsed = commands.parse(body) if body else None
        correction = msg.xml.find(f"{{{CORRECTION_NS}}}replace")  # XEP-0308
        replaces = correction.get("id") if correction is not None else None
        # The session, its conversation and the blocked flag in one round trip; a line
        # (not a command) lifts the writer's force-away there too, and is appended to
        # the log there when its conversation is the writer's and answered already
        # (relay.operator_line; a correction first looks up the line it corrects).
        line = None
        if body and not parsed and not replaces and len(body) <= self._desk.settings.max_message_chars:
            line = OperatorLine(
                relay.operator_message_id(sender, msg["id"]),
                chat_line("operator", body, now_ms()),
                {site: self._desk.operators.display_name(sender, site) for site in sites},
            )
        context = (
            await self._desk.routing.line_context(
                self._desk.sessions.key(visitor_id), visitor_id, sender if body and not parsed else None, sites, line
            )
            if visitor_id
            else None
        )
        session = context.session if context else None
        if visitor_id is None or session is None:
            # A receipt or chat state for a visit that just ended is not worth an error
            # (clients may show one as "message not delivered"); a line is.
            if body:
                self._component.error(msg, "item-not-found", "No such visitor, or their visit has ended.", "cancel")
            return
        if not self._desk.operators.is_operator(sender, session["site_id"]):
            self._refuse(msg, "This visitor is on a site you do not operate.")
            return
        visitor_jid = str(msg["to"].bare)
        reply_to = str(msg["from"])

        def reply(text: str) -> None:
            self._desk.info(visitor_jid, reply_to, text)

        if not body:
            received = msg.xml.find(f"{{{RECEIPTS_NS}}}received")
            conversation = context.conversation if context else None
            if received is not None and received.get("id"):
                await relay.operator_received(
                    self._desk, sender, visitor_id, session, received.get("id", ""), conversation
                )
            state = next((s for s in CHAT_STATES if msg.xml.find(f"{{{CHATSTATES_NS}}}{s}") is not None), None)
            if state:
                await relay.operator_typing(self._desk, sender, visitor_id, session, state, conversation)
            return
        if parsed:
            name, args = parsed
            await commands.run(self._desk, sender, session["site_id"], visitor_id, name, args, reply)
            return
        # XEP-0184: the client's tick means "in the log and published"; a client that
        # resends an unticked line with the same id after a gateway restart is stored once.
        on_committed = None
        if msg["id"] and msg.xml.find(f"{{{RECEIPTS_NS}}}request") is not None:
            stanza_id = msg["id"]

            def on_committed() -> None:
                self._desk.outbox.receipt(visitor_jid, reply_to, stanza_id)

        def delayed(_reason: str) -> None:
            # Logged, not yet published: an info line, not an error, so the operator
            # does not resend a line the visitor will see (never a silent wait either).
            metrics.OPERATOR_LINES_DELAYED.inc()
            reply(DELAYED)

        refusal = await relay.operator_line(
            self._desk, sender, visitor_id, session, body, msg["id"], on_committed,
            replaces=replaces or None, on_delayed=delayed, deadline=deadline, context=context,
        )  # fmt: skip
        if refusal:
            reply(refusal)
            return
        metrics.OPERATOR_LINES.inc()

    async def _to_bot(self, msg: Message, sender: str, site_id: str, body: str) -> None:
        if not self._desk.operators.is_operator(sender, site_id):
            self._refuse(msg, "Only this site's operators may talk to its bot.")
            return
        if not body.strip():
            return
        bot_jid = self._desk.bot_jid(site_id)
        reply_to = str(msg["from"])

        def reply(text: str) -> None:
            self._desk.outbox.chat(bot_jid, reply_to, text)

        name, args = commands.parse(body) or ("help", "")
        await commands.run(self._desk, sender, site_id, None, name, args, reply)
        if msg["id"] and msg.xml.find(f"{{{RECEIPTS_NS}}}request") is not None:
            self._desk.outbox.receipt(bot_jid, reply_to, msg["id"])  # the command has run

    # --- presence -------------------------------------------------------------------
    def _visit_ended(self, pres: Presence, kind: str, operator: str) -> None:
        """An operator's roster still holds a visitor we no longer know: the visit ended.

        Not a stranger's request, so no "forbidden": the contact leaves the roster
        where we may write it, and a probe or request is told why it stays offline.
        """
        jid = str(pres["to"].bare)
        # "Visit ended" goes out before the roster removal is written (the removal waits
        # for the pushes' next flush): a client that has the contact removed first drops
        # the presence as a stranger's. An operator's resource coming online sends its
        # available presence to the contact before the server's probe arrives, so that
        # is answered too; otherwise its removal could overtake the probe's answer.
        if kind == "subscribe":
            self._desk.outbox.presence(jid, operator, kind="unsubscribed")
        if kind in ("", "subscribe", "probe"):
            self._desk.outbox.presence(jid, operator, kind="unavailable", status=VISIT_ENDED)
        self._rosters.forget_stale(operator, jid)

    # --- presence -------------------------------------------------------------------
    async def presence(self, pres: Presence) -> None:
        # Presence['type'] folds <show/> into the type; the attribute is what we need.
        kind = pres.xml.get("type") or ""
        if kind == "error":
            return
        sender = pres["from"].bare.lower()
        local = pres["to"].user
        site_id = self._desk.site_of_bot(local) if local else None
        visitor_id = None
        if site_id is None and local:
            visitor_id = await self._desk.names.visitor_of(local)
            session = await self._desk.sessions.get(visitor_id) if visitor_id else None
            site_id = session["site_id"] if session else None
        if site_id is None and local and self._desk.operators.sites_of(sender):
            self._visit_ended(pres, kind, sender)
            return
        allowed = site_id is not None and self._desk.operators.is_operator(sender, site_id)
        if not allowed:
            if kind in ("", "subscribe", "probe"):
                self._refuse(pres, "Only a site's operators may subscribe to its bot and visitors.")
            return
        assert site_id is not None
        if kind == "subscribe":
            self._roster.accept(sender, str(pres["to"].bare))
            if visitor_id:
                await self._rosters.show(sender, str(pres["to"].bare))
            elif not self._desk.roster_managed(sender):
                # Ask back: our first request may have crossed the client's own and
                # been lost (the server answers an early probe with "unsubscribed").
                # If we already have their presence subscription this is a no-op.
                self._roster.invite(sender, site_id)
        elif kind == "probe":
            # The server probes every contact when the operator (or another of their
            # resources) comes online: answered through the coalescer, so a roster
            # full of visitors costs the operator no burst.
            if visitor_id:
                await self._rosters.show(sender, str(pres["to"].bare))
            else:
                self._bot.present_to(sender, site_id)
        elif kind in ("", "unavailable") and visitor_id is None:
            online = kind == ""
            if online:
                # A status change lifts a force-away (the operator is clearly there).
                await self._desk.routing.clear_away(sender)
            await self._desk.availability.update(sender, pres["from"].resource, pres["show"], pres["status"], online)
            if online and sender not in self._seen_online:
                self._seen_online.add(sender)
                self._bot.present_to(sender, site_id)
