"""Every operator command, typed in a real XMPP client, with both prefixes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from libs.common import codec
from libs.common.state.conversations import ConversationLog
from libs.common.state.sessions import VisitorSessions
from tests.im_gateway.conftest import Site, Visitor


async def _chatting(make_site, operators: int = 1) -> tuple[Site, Visitor]:
    site: Site = await make_site(operators)
    visitor = await site.visitor(page_url="https://shop.example/boots", title="Winter boots")
    await site.say(visitor, "Hello?")
    await site.operators[0].wait_for(lambda r: r.kind == "message" and r.body == "Hello?")
    await site.contact(visitor)  # what the operator's client shows of them from here on
    return site, visitor


async def test_help_with_both_prefixes_and_unknown_commands_answer_with_help(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    for text in ("!help", "/help"):
        answer = await op.ask(site.bot, text)
        for name in ("who", "follow", "unfollow", "end", "transfer", "name", "email", "phone", "note", "block",
                     "push", "info", "transcript"):  # fmt: skip
            assert f"!{name}" in answer, (text, name)
    unknown = await op.ask(site.bot, "!frobnicate now")
    assert unknown.startswith("Unknown command !frobnicate.") and "!who" in unknown
    plain = await op.ask(site.bot, "hello bot")
    assert "!who" in plain


async def test_who_lists_visitors_with_page_time_and_chat_state(make_site) -> None:
    site, visitor = await _chatting(make_site)
    browsing = await site.visitor(page_url="https://shop.example/sale", title="Sale")
    answer = await site.operators[0].ask(site.bot, "/who")
    assert answer.startswith("2 on the site:")
    chatting_line = next(line for line in answer.splitlines() if visitor.jid in line)
    assert "Winter boots — https://shop.example/boots" in chatting_line
    assert "on site" in chatting_line and "chatting with" in chatting_line
    browsing_line = next(line for line in answer.splitlines() if browsing.jid in line)
    assert "https://shop.example/sale" in browsing_line and "chatting" not in browsing_line


# Followed visitors' presence reaches a strict client only as a roster contact (per server).
@pytest.mark.both_servers
async def test_follow_shows_page_changes_and_unfollow_stops_them(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    visitor = await site.visitor(page_url="https://shop.example/", title="Home")
    name = visitor.jid.split("@")[0]
    assert "Following" in await op.ask(site.bot, f"!follow {name}")
    await site.contact(visitor)  # a followed visitor is a roster contact
    await op.wait_for(lambda r: r.kind == "presence" and r.sender == visitor.jid and "Home" in r.status)
    await site.page_view(visitor.visitor_id, "https://shop.example/cart", "Cart")
    await op.wait_for(lambda r: r.kind == "presence" and r.sender == visitor.jid and "/cart" in r.status)

    assert "No longer following" in await op.ask(site.bot, f"!unfollow {name}")
    await op.wait_for(lambda r: r.kind == "presence" and r.sender == visitor.jid and r.ptype == "unavailable")
    await site.page_view(visitor.visitor_id, "https://shop.example/checkout", "Checkout")
    await asyncio.sleep(1.0)  # > 3 presence intervals: a follower would have had it
    assert not [r for r in op.received if "/checkout" in r.status]
    assert "not following" in await op.ask(site.bot, f"!unfollow {name}")


async def test_end_closes_the_conversation_and_publishes_the_action(make_site) -> None:
    site, visitor = await _chatting(make_site)
    answer = await site.operators[0].ask(visitor.jid, "!end")
    assert "ended" in answer and answer.startswith("[Habla] ")
    action = await site.published.wait_for(lambda s: isinstance(s, codec.OperatorAction) and s.action == "end")
    assert action.conversation_id == visitor.conversation_id and action.operator_jid == site.operators[0].jid
    assert await site.gateway.desk.routing.get(visitor.conversation_id) is None
    # The visitor leaves the operator's list (they do not follow it).
    await site.operators[0].wait_for(
        lambda r: r.kind == "presence" and r.sender == visitor.jid and r.ptype == "unavailable"
    )
    assert "no open chat" in await site.operators[0].ask(visitor.jid, "/end")


async def test_transfer_to_a_named_operator_and_to_everyone(make_site) -> None:
    site, visitor = await _chatting(make_site, operators=3)
    first, second, third = site.operators
    answer = await first.ask(visitor.jid, f"!transfer {second.jid}")
    assert f"transferred to {second.jid}" in answer
    await second.wait_for(lambda r: r.kind == "message" and "transferred" in r.body and r.sender == visitor.jid)
    name = visitor.jid.split("@")[0]
    await second.wait_for(lambda r: r.kind == "message" and r.body == f"[{name}] Hello?" and r.sender == visitor.jid)
    conversation = await site.gateway.desk.routing.get(visitor.conversation_id)
    assert conversation is not None and conversation.operator == second.jid
    action = await site.published.wait_for(lambda s: isinstance(s, codec.OperatorAction) and s.action == "transfer")
    assert action.value == second.jid
    # The old operator may no longer answer; the new one may.
    refused = await first.ask(visitor.jid, "still there?")
    assert "is handling this chat" in refused
    # Offer to all available operators: the first to answer takes it.
    offered = await second.ask(visitor.jid, "/transfer")
    assert "offered to" in offered and first.jid in offered and third.jid in offered
    await third.wait_for(lambda r: r.kind == "message" and "reply to take this chat" in r.body)
    third.say(visitor.jid, "I can help with boots.")
    await site.deliveries.wait_for(lambda d: d.message is not None and d.message.body == "I can help with boots.")
    conversation = await site.gateway.desk.routing.get(visitor.conversation_id)
    assert conversation is not None and conversation.operator == third.jid
    assert "not an operator" in await third.ask(visitor.jid, "!transfer nobody@nowhere.example")


async def test_name_email_phone_are_recorded_and_validated(make_site) -> None:
    site, visitor = await _chatting(make_site)
    op = site.operators[0]
    assert "recorded: Jane Doe" in await op.ask(visitor.jid, "!name Jane Doe")
    assert "recorded: jane@shop.example" in await op.ask(visitor.jid, "/email jane@shop.example")
    assert "recorded: +49 30 1234567" in await op.ask(visitor.jid, "!phone +49 30 1234567")
    assert "is not an email address" in await op.ask(visitor.jid, "!email not-an-address")
    assert "is not a phone number" in await op.ask(visitor.jid, "!phone call me maybe")
    session = await VisitorSessions(site.redis, site.settings).get(visitor.visitor_id)
    assert session is not None
    assert (session["name"], session["email"], session["phone"]) == ("Jane Doe", "jane@shop.example", "+49 30 1234567")
    for field, value in (("name", "Jane Doe"), ("email", "jane@shop.example"), ("phone", "+49 30 1234567")):
        await site.published.wait_for(_action(field, value))


def _action(action: str, value: str) -> Callable[[Any], bool]:
    return lambda s: isinstance(s, codec.OperatorAction) and s.action == action and s.value == value


async def test_note_is_archived_as_internal_and_never_reaches_the_visitor(make_site) -> None:
    site, visitor = await _chatting(make_site)
    answer = await site.operators[0].ask(visitor.jid, "!note wants a refund, VIP customer")
    assert "does not see it" in answer
    note = await site.published.wait_for(lambda s: isinstance(s, codec.ChatMessage) and s.internal)
    assert note.body == "wants a refund, VIP customer" and note.seq == 0
    log = await ConversationLog(site.redis, site.settings).after(visitor.conversation_id, 0)
    assert all("refund" not in entry["body"] for entry in log)
    assert all(d.message is None or "refund" not in d.message.body for d in site.deliveries.items)


async def test_block_stops_the_visitor_reaching_operators(make_site) -> None:
    site, visitor = await _chatting(make_site)
    op = site.operators[0]
    assert "is blocked" in await op.ask(visitor.jid, "!block")
    await site.published.wait_for(lambda s: isinstance(s, codec.OperatorAction) and s.action == "block")
    await site.say(visitor, "spam spam spam")
    await site.say(visitor, "marker")  # nothing after a blocked line either
    await asyncio.sleep(1.0)
    assert not [r for r in op.received if r.body in ("spam spam spam", "marker")]


async def test_push_sends_the_browser_to_a_url_and_refuses_non_web_addresses(make_site) -> None:
    site, visitor = await _chatting(make_site)
    op = site.operators[0]
    assert "being sent to https://shop.example/sale" in await op.ask(visitor.jid, "!push https://shop.example/sale")
    delivery = await site.deliveries.wait_for(lambda d: d.action is not None and d.action.action == "push")
    assert delivery.action.value == "https://shop.example/sale" and delivery.visitor_id == visitor.visitor_id
    assert "is not a web address" in await op.ask(visitor.jid, "!push javascript:alert(1)")


async def test_info_and_transcript(make_site) -> None:
    site, visitor = await _chatting(make_site)
    op = site.operators[0]
    op.say(visitor.jid, "Hi! How can I help?")
    await site.deliveries.wait_for(lambda d: d.message is not None and d.message.body == "Hi! How can I help?")
    await site.page_view(visitor.visitor_id, "https://shop.example/boots/44", "Boots size 44", visitor.conversation_id)
    await asyncio.sleep(0.3)
    info = await op.ask(visitor.jid, "!info")
    assert "referrer: https://search.example/?q=shoes" in info
    assert "browser: Mozilla/5.0" in info
    assert "Boots size 44 — https://shop.example/boots/44" in info and "on site:" in info
    transcript = await op.ask(visitor.jid, "/transcript")
    name = visitor.jid.split("@")[0]
    assert f"{name}: Hello?" in transcript and "Agent 0: Hi! How can I help?" in transcript
    # Named through the bot, too; another site's visitor is unknown here.
    assert "referrer:" in await op.ask(site.bot, f"!info {name}")
    other = await make_site(1)
    stranger_visitor = await other.visitor()
    answer = await op.ask(site.bot, f"!info {stranger_visitor.jid.split('@')[0]}")
    assert answer.startswith("No visitor")
