"""end, transfer, block, note, transcript: what an operator does to a conversation."""

from __future__ import annotations

import time
import uuid

from libs.common import chatlines, codec
from libs.common.state.conversations import shown
from services.im_gateway import voice
from services.im_gateway.commands.registry import Call, CommandError, command
from services.im_gateway.events import now_ms
from services.im_gateway.outbox import XmppUnavailable
from services.im_gateway.routing import Conversation


async def _conversation(call: Call) -> tuple[Conversation, dict[str, str]]:
    session = await call.session()
    conversation = await call.desk.routing.get(session.get("conversation_id", ""))
    if conversation is None:
        raise CommandError(f"there is no open chat with {await call.visitor_name()}")
    return conversation, session


@command("end", "end", "close the chat (the transcript goes to the site owner)", needs_visitor=True)
async def end(call: Call) -> None:
    conversation, _session = await _conversation(call)
    await call.desk.events.action(
        site_id=call.site_id,
        conversation_id=conversation.conversation_id,
        visitor_id=conversation.visitor_id,
        operator=call.operator,
        action="end",
    )
    await call.desk.routing.close(conversation.conversation_id)
    await call.desk.hide_visitor(conversation)
    call.desk.dirty_sites.add(call.site_id)
    call.reply(f"Chat with {await call.visitor_name()} ended; the transcript goes to the site owner.")


@command("block", "block", "end the chat and ignore this visitor from now on", needs_visitor=True)
async def block(call: Call) -> None:
    assert call.visitor_id is not None
    session = await call.session()
    conversation_id = session.get("conversation_id", "")
    await call.desk.routing.block(call.site_id, call.visitor_id)
    await call.desk.events.action(
        site_id=call.site_id,
        conversation_id=conversation_id,
        visitor_id=call.visitor_id,
        operator=call.operator,
        action="block",
    )
    closed = await call.desk.routing.close(conversation_id) if conversation_id else None
    if closed is not None:
        await call.desk.hide_visitor(closed)
    call.desk.dirty_sites.add(call.site_id)
    call.reply(f"{await call.visitor_name()} is blocked; their lines no longer reach operators.")


@command("note", "note <text>", "an internal note for the transcript; the visitor never sees it", needs_visitor=True)
async def note(call: Call) -> None:
    if not call.args:
        raise CommandError("write the note after the command: !note <text>")
    conversation, _session = await _conversation(call)
    # Not in the conversation log (the widget shows the log): habla.operator only,
    # internal, seq 0 (CONTRACTS.md).
    await call.desk.events.operator_line(
        codec.ChatMessage(
            message_id=uuid.uuid4().hex,
            conversation_id=conversation.conversation_id,
            site_id=call.site_id,
            visitor_id=conversation.visitor_id,
            sender=codec.SenderKind.OPERATOR,
            operator_jid=call.operator,
            body=call.args,
            sent_at_ms=now_ms(),
            seq=0,
            operator_name=call.desk.operators.display_name(call.operator, call.site_id),
            internal=True,
        )
    )
    call.reply("Note kept in the transcript; the visitor does not see it.")


@command("transcript", "transcript", "the chat so far", needs_visitor=True)
async def transcript(call: Call) -> None:
    conversation, _session = await _conversation(call)
    entries = shown(await call.desk.log.after(conversation.conversation_id, 0))
    name = await call.visitor_name()
    lines = [f"Chat with {name} ({len(entries)} lines):"]
    for entry in entries:
        at = time.strftime("%H:%M", time.gmtime(int(entry.get("sent_at_ms", 0)) / 1000))
        who = {"visitor": name, "system": "—"}.get(entry.get("sender", ""), entry.get("operator_name") or "operator")
        edited = " (edited)" if entry.get("edited") else ""
        lines.append(f"[{at}] {chatlines.as_text(who, str(entry.get('body', '')))}{edited}")
    call.reply("\n".join(lines))


@command(
    "transfer", "transfer [operator]", "hand the chat to one operator, or offer it to all available", needs_visitor=True
)
async def transfer(call: Call) -> None:
    desk = call.desk
    conversation, _session = await _conversation(call)
    visitor_jid = await desk.names.jid_of(conversation.visitor_id)
    name = visitor_jid.split("@", 1)[0]
    me = desk.operators.display_name(call.operator, call.site_id)
    target = _operator_named(call, call.args) if call.args else None
    if target == call.operator:
        raise CommandError("that is you: name another operator, or leave it out to offer the chat to everyone")
    if target:
        await desk.routing.assign(conversation.conversation_id, call.site_id, conversation.visitor_id, target)
        recipients = [target]
    else:
        recipients = [
            op
            for op in await desk.availability.available_operators(call.site_id)
            if op != call.operator and desk.operators.is_operator(op, call.site_id)
        ]
        if not recipients:
            raise CommandError("no other operator is available right now; the chat stays with you")
        await desk.routing.offer(conversation.conversation_id, call.site_id, conversation.visitor_id, recipients)
    await desk.events.action(
        site_id=call.site_id,
        conversation_id=conversation.conversation_id,
        visitor_id=conversation.visitor_id,
        operator=call.operator,
        action="transfer",
        value=target or "all",
    )
    for operator in recipients:
        try:
            await desk.show_visitor(operator, conversation.visitor_id)
            offer = "this chat is yours now" if target else "reply to take this chat"
            desk.info(visitor_jid, operator, f"{me} transferred {name} to you: {offer}. The chat so far:")
            for entry in shown(await desk.log.after(conversation.conversation_id, 0)):
                body = str(entry.get("body", ""))
                if entry.get("sender") == "visitor":
                    who, body = name, voice.from_visitor(body)
                else:
                    who = entry.get("operator_name") or "operator"
                desk.outbox.chat(visitor_jid, operator, f"[{who}] {body}")
        except XmppUnavailable:
            raise CommandError("the XMPP connection dropped; try again in a moment") from None
    if target:
        call.reply(f"{name} is transferred to {target}.")
    else:
        call.reply(f"{name} is offered to {', '.join(recipients)}; the first to answer takes the chat.")


def _operator_named(call: Call, wanted: str) -> str:
    wanted = wanted.strip().lower()
    operators = call.desk.operators.operators_of(call.site_id)
    for jid, display in operators.items():
        if wanted in (jid, jid.split("@", 1)[0], display.lower()):
            return jid
    raise CommandError(f"{wanted!r} is not an operator of this site; they are: {', '.join(sorted(operators))}")
