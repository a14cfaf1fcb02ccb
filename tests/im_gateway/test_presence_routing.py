"""Operator availability → site online/offline; assignment, stickiness, force-away, operator-initiated chat."""

from __future__ import annotations

import asyncio

import pytest

from libs.common import codec
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import OperatorPresence
from libs.common.state.sessions import VisitorSessions
from tests.im_gateway.conftest import Site, gone_from_roster
from tests.im_gateway.operator_client import DEADLINE_S


# Operator presence and probes come from the server.
@pytest.mark.both_servers
async def test_site_online_follows_operator_presence(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    await site.published.wait_for(lambda s: isinstance(s, codec.SiteStatus) and s.online)
    op.xmpp.send_presence(pshow="away", pstatus="lunch")
    await site.wait_online(False)
    await site.published.wait_for(lambda s: isinstance(s, codec.SiteStatus) and not s.online)
    presence = await site.published.wait_for(
        lambda s: isinstance(s, codec.OperatorPresence) and s.availability == codec.Availability.AWAY
    )
    assert presence.operator_jid == op.jid and presence.status_text == "lunch" and presence.site_ids == [site.site_id]
    op.xmpp.send_presence()
    await site.wait_online(True)
    await op.stop()
    await site.wait_online(False)


async def test_presence_expires_without_heartbeat(make_site, gateway_settings) -> None:
    """The Redis entry the gateway refreshes expires by itself (here: written without a gateway)."""
    site: Site = await make_site(1, wait_online=False, shows=["dnd"])
    presence = OperatorPresence(site.redis, gateway_settings)
    await presence.set_available([site.site_id], "ghost@localhost", "laptop", True)
    assert await site.online()
    await site.wait_online(False, within=gateway_settings.presence_ttl_s + DEADLINE_S)


async def test_least_busy_assignment_is_sticky(make_site) -> None:
    site: Site = await make_site(2)
    first, second = site.operators
    alice = await site.visitor()
    bob = await site.visitor()
    await site.say(alice, "alice here")
    got_alice = await _who_got(site, "alice here")
    await site.say(bob, "bob here")
    got_bob = await _who_got(site, "bob here")
    assert {got_alice, got_bob} == {first.jid, second.jid}  # the idle one took the second chat
    await site.say(alice, "alice again")
    assert await _who_got(site, "alice again") == got_alice


async def _who_got(site: Site, body: str) -> str:
    for _ in range(100):
        for op in site.operators:
            if any(r.body == body for r in op.received):
                return op.jid
        await asyncio.sleep(0.05)
    raise TimeoutError(body)


async def test_unanswered_chat_forces_the_operator_away_and_goes_to_another(make_site, gateway_settings) -> None:
    site: Site = await make_site(2)
    visitor = await site.visitor()
    await site.say(visitor, "anyone there?")
    slow_jid = await _who_got(site, "anyone there?")
    slow = next(op for op in site.operators if op.jid == slow_jid)
    other = next(op for op in site.operators if op.jid != slow_jid)
    within = gateway_settings.gateway_answer_timeout_s + DEADLINE_S
    notice = await slow.wait_for(lambda r: r.kind == "message" and "without an answer" in r.body, within)
    assert notice.body.startswith("[Habla] ") and other.jid in notice.body
    handed = await other.wait_for(lambda r: r.kind == "message" and "this chat is yours now" in r.body, within)
    assert handed.sender == visitor.jid
    await other.wait_for(lambda r: r.kind == "message" and r.body == "anyone there?" and r.sender == visitor.jid)
    conversation = await site.gateway.desk.routing.get(visitor.conversation_id)
    assert conversation is not None and conversation.operator == other.jid
    assert slow.jid in await site.gateway.desk.routing.forced_away()
    # A new chat skips the forced-away operator even though the other is busier.
    newcomer = await site.visitor()
    await site.say(newcomer, "hi from the newcomer")
    assert await _who_got(site, "hi from the newcomer") == other.jid
    # Changing status makes the slow operator routable again.
    slow.xmpp.send_presence(pstatus="back")
    for _ in range(100):
        if slow.jid not in await site.gateway.desk.routing.forced_away():
            break
        await asyncio.sleep(0.05)
    assert slow.jid not in await site.gateway.desk.routing.forced_away()


async def test_operator_starts_a_chat_with_a_visitor_from_who(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    visitor = await site.visitor(page_url="https://shop.example/pricing", title="Pricing")
    assert visitor.jid in await op.ask(site.bot, "!who")
    op.say(visitor.jid, "Hi, questions about our prices?")
    delivery = await site.deliveries.wait_for(lambda d: d.message is not None and d.visitor_id == visitor.visitor_id)
    session = await VisitorSessions(site.redis, site.settings).get(visitor.visitor_id)
    assert session is not None and session["conversation_id"] == delivery.conversation_id
    log = await ConversationLog(site.redis, site.settings).after(delivery.conversation_id, 0)
    assert [(e["sender"], e["body"]) for e in log] == [("operator", "Hi, questions about our prices?")]
    # The visitor's answer comes back to the operator who started it.
    visitor.conversation_id = delivery.conversation_id
    await site.say(visitor, "yes please")
    await op.wait_for(lambda r: r.kind == "message" and r.body == "yes please" and r.sender == visitor.jid)


async def test_visitor_ending_the_chat_tells_the_operator(make_site) -> None:
    site: Site = await make_site(1)
    visitor = await site.visitor()
    await site.say(visitor, "bye soon")
    await site.operators[0].wait_for(lambda r: r.body == "bye soon")
    await site.event(visitor, codec.VisitorEventKind.ENDED_CHAT)
    await site.operators[0].wait_for(lambda r: r.kind == "message" and "visitor ended the chat" in r.body)
    assert await site.gateway.desk.routing.get(visitor.conversation_id) is None


async def test_a_resent_operator_line_is_stored_once_and_receipted(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    visitor = await site.visitor()
    await site.say(visitor, "hello")
    await op.wait_for(lambda r: r.body == "hello")
    op.say(visitor.jid, "same line", stanza_id="line-1", receipt=True)
    op.say(visitor.jid, "same line", stanza_id="line-1", receipt=True)
    op.say(visitor.jid, "marker", stanza_id="line-2", receipt=True)
    for _ in range(100):
        if {"line-1", "line-2"} <= op.receipts:
            break
        await asyncio.sleep(0.05)
    assert {"line-1", "line-2"} <= op.receipts
    log = await ConversationLog(site.redis, site.settings).after(visitor.conversation_id, 0)
    assert [e["body"] for e in log] == ["hello", "same line", "marker"]


async def test_typing_travels_both_ways(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    visitor = await site.visitor()
    await site.say(visitor, "question")
    await op.wait_for(lambda r: r.body == "question")
    await site.event(visitor, codec.VisitorEventKind.TYPING)
    for _ in range(100):
        if (visitor.jid, "composing") in op.chat_states:
            break
        await asyncio.sleep(0.05)
    assert (visitor.jid, "composing") in op.chat_states
    message = op.xmpp.make_message(mto=visitor.jid, mtype="chat")
    message["chat_state"] = "composing"
    message.send()
    delivery = await site.deliveries.wait_for(lambda d: d.action is not None and d.action.action == "typing")
    assert delivery.visitor_id == visitor.visitor_id


async def test_identified_and_left_visitors_are_shown_to_the_operator(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    visitor = await site.visitor()
    await site.say(visitor, "hi")
    await op.wait_for(lambda r: r.body == "hi")
    await site.contact(visitor)
    await site.event(visitor, codec.VisitorEventKind.IDENTIFIED, name="Jane Doe", email="jane@shop.example")
    introduced = await op.wait_for(lambda r: r.kind == "message" and "introduced themselves" in r.body)
    assert introduced.sender == visitor.jid and "Jane Doe, jane@shop.example" in introduced.body
    await site.event(visitor, codec.VisitorEventKind.LEFT)
    if site.roster_managed:
        # The contact leaves the roster; its "Left the site" may arrive first or not at all.
        await gone_from_roster(op, visitor.jid)
    else:
        left = await op.wait_for(lambda r: r.sender == visitor.jid and r.ptype == "unavailable")
        assert left.status == "Left the site"


async def test_a_line_in_an_answered_chat_is_logged_in_the_same_round_trip_as_its_context(
    make_site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the operator has answered, their next line is appended by Routing.line_context
    (one round trip: session, conversation, blocked flag and the log append), not by a
    separate ConversationLog.append; numbered, named, deduped and receipted as before."""
    site: Site = await make_site(1)
    op = site.operators[0]
    visitor = await site.visitor()
    await site.say(visitor, "hello")
    await op.wait_for(lambda r: r.body == "hello")
    op.say(visitor.jid, "first answer", stanza_id="ans-1", receipt=True)  # taking the chat: the usual append
    await _receipted(op, "ans-1")
    log = site.gateway.desk.log
    appends: list[tuple[object, ...]] = []
    append = log.append

    async def counted(*args: object, **kwargs: object) -> object:
        appends.append(args)
        return await append(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(log, "append", counted)
    op.say(visitor.jid, "second line", stanza_id="ans-2", receipt=True)
    op.say(visitor.jid, "second line", stanza_id="ans-2", receipt=True)  # a resend: stored once
    op.say(visitor.jid, "third line", stanza_id="ans-3", receipt=True)
    await _receipted(op, "ans-2", "ans-3")
    assert appends == []
    entries = await ConversationLog(site.redis, site.settings).after(visitor.conversation_id, 0)
    assert [(e["sender"], e["body"], e["seq"], e["operator_name"]) for e in entries] == [
        ("visitor", "hello", 1, None),
        ("operator", "first answer", 2, "Agent 0"),
        ("operator", "second line", 3, "Agent 0"),
        ("operator", "third line", 4, "Agent 0"),
    ]
    delivery = await site.deliveries.wait_for(lambda d: d.message is not None and d.message.body == "third line")
    assert delivery.message.seq == 4 and delivery.message.operator_name == "Agent 0"
    assert delivery.message.message_id == entries[3]["message_id"]
    assert delivery.message.sent_at_ms == entries[3]["sent_at_ms"]
    # Blocked: refused before anything is appended, in the same round trip too.
    assert "is blocked" in await op.ask(visitor.jid, "!block")
    op.say(visitor.jid, "after the block", stanza_id="ans-4", receipt=True)
    await op.wait_for(lambda r: r.kind == "message" and r.body.endswith("This visitor is blocked."))
    after = await ConversationLog(site.redis, site.settings).after(visitor.conversation_id, 4)
    assert [e["body"] for e in after] == []


async def _receipted(op: object, *stanza_ids: str) -> None:
    for _ in range(200):
        if set(stanza_ids) <= op.receipts:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no receipt for {set(stanza_ids) - op.receipts}")  # type: ignore[attr-defined]
