"""Force-away: a new chat left unanswered is offered to the others.

An operator who does not answer within HABLA_GATEWAY_ANSWER_TIMEOUT_S is marked away
for routing (until they write or change their status) and the chat goes to the least
busy other available operator; both get a [Habla] line saying so.
"""

from __future__ import annotations

import asyncio
import logging

from services.im_gateway import voice
from services.im_gateway.desk import Desk
from services.im_gateway.outbox import XmppUnavailable
from services.im_gateway.relay import route_new

log = logging.getLogger(__name__)

# Deadlines are checked every second: timeouts are tens of seconds, so a second late
# is invisible, and one Redis query a second is nothing.
CHECK_EVERY_S = 1.0


async def check(desk: Desk) -> int:
    """Handle every overdue chat; returns how many were handed over or released."""
    handled = 0
    for conversation_id in await desk.routing.overdue():
        conversation = await desk.routing.get(conversation_id)
        if conversation is None or conversation.answered or not conversation.operator:
            await desk.routing.drop_deadline(conversation_id)
            continue
        slow = conversation.operator
        await desk.routing.force_away(slow)
        visitor_jid = await desk.names.jid_of(conversation.visitor_id)
        name = visitor_jid.split("@", 1)[0]
        waited = desk.settings.gateway_answer_timeout_s
        successor = await route_new(
            desk, conversation_id, conversation.site_id, conversation.visitor_id, exclude=[slow]
        )
        handled += 1
        try:
            if successor.operator:
                desk.info(
                    desk.bot_jid(conversation.site_id),
                    slow,
                    f"{name} waited {waited} s without an answer: you are marked away for new chats until you "
                    f"write or change your status; the chat now goes to {successor.operator}.",
                )
                await desk.show_visitor(successor.operator, conversation.visitor_id)
                desk.info(
                    visitor_jid,
                    successor.operator,
                    f"{name} waited {waited} s for {slow} without an answer; this chat is yours now.",
                )
                await _replay(desk, successor.operator, conversation_id, visitor_jid)
            else:
                # Nobody else: it stays offered to everyone connected, the slow one included.
                await desk.routing.offer(
                    conversation_id, conversation.site_id, conversation.visitor_id, [slow, *successor.offered]
                )
                desk.info(
                    desk.bot_jid(conversation.site_id),
                    slow,
                    f"{name} waited {waited} s without an answer: you are marked away for new chats; "
                    "nobody else is available, so please answer.",
                )
        except XmppUnavailable:
            log.warning("force-away notice not sent: XMPP down", extra={"conversation": conversation_id})
    return handled


async def _replay(desk: Desk, operator: str, conversation_id: str, visitor_jid: str) -> None:
    """The visitor's lines so far, so the new operator knows what was asked."""
    for entry in await desk.log.after(conversation_id, 0):
        if entry.get("sender") == "visitor":
            desk.outbox.chat(visitor_jid, operator, voice.from_visitor(str(entry.get("body", ""))))


async def watch(desk: Desk) -> None:
    while True:
        await asyncio.sleep(CHECK_EVERY_S)
        try:
            await check(desk)
        except Exception:
            log.exception("force-away check failed")
