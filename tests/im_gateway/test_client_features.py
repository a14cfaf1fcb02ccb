"""XMPP client features through a real client connection to Prosody: what the gateway's
JIDs advertise (disco#info, entity caps), receipts, chat states, corrections, /me and
lines from Habla itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError

from libs.common import codec
from libs.common.state.conversations import ConversationLog, shown
from services.im_gateway import disco
from tests.im_gateway.conftest import Site


async def _eventually(check: Callable[[], Any], within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met")


# Disco and caps pass through (and could be answered by) the server.
@pytest.mark.both_servers
async def test_visitor_and_bot_advertise_what_the_gateway_supports(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    caps: dict[str, str] = {}

    def on_presence(pres: Any) -> None:
        c = pres.xml.find(f"{{{disco.CAPS_NS}}}c")
        if c is not None:
            caps[pres["from"].bare] = c.get("ver")

    op.xmpp.add_event_handler("presence", on_presence)
    visitor = await site.visitor()
    await site.say(visitor, "hello")
    await op.wait_for(lambda r: r.body == "hello")
    await _eventually(lambda: visitor.jid in caps)

    discovered = op.xmpp.plugin["xep_0030"]
    info = (await discovered.get_info(jid=JID(visitor.jid), timeout=10))["disco_info"]
    features = set(info["features"])
    assert {disco.RECEIPTS_NS, disco.CHATSTATES_NS, disco.CORRECTION_NS, disco.VERSION_NS} <= features
    assert ("client", "web", None, "Habla visitor") in info["identities"]
    # The caps hash in the presence is the one of exactly these features (XEP-0115 §5).
    assert caps[visitor.jid] == disco.VISITOR.ver
    by_node = (
        await discovered.get_info(jid=JID(visitor.jid), node=f"{disco.CAPS_NODE}#{caps[visitor.jid]}", timeout=10)
    )["disco_info"]
    assert set(by_node["features"]) == features

    # The bot's presence carries its own caps (asked for again with a probe).
    op.xmpp.send_presence(pto=site.bot, ptype="probe")
    await _eventually(lambda: caps.get(site.bot) == disco.BOT.ver)
    bot = (await discovered.get_info(jid=JID(site.bot), timeout=10))["disco_info"]
    assert disco.RECEIPTS_NS in bot["features"] and disco.CORRECTION_NS not in bot["features"]

    op.xmpp.register_plugin("xep_0092")
    version = await op.xmpp.plugin["xep_0092"].get_version(JID(visitor.jid), timeout=10)
    assert version["software_version"]["name"] == "Habla" and not version["software_version"]["os"]

    # An operator learns that a contact is stale (no such visitor on their sites)...
    made_up = f"quiet-newt-999999@{site.settings.xmpp_component_domain}"
    try:
        await discovered.get_info(jid=JID(made_up), timeout=10)
        raise AssertionError("disco#info of an unknown visitor answered")
    except IqError as exc:
        assert exc.iq["error"]["condition"] == "item-not-found"
    # ...but the operator of another site learns nothing: one answer for every name.
    other = (await make_site(1)).operators[0]
    for jid in (visitor.jid, made_up):
        try:
            await other.xmpp.plugin["xep_0030"].get_info(jid=JID(jid), timeout=10)
            raise AssertionError("disco#info told another site's operator about a visitor")
        except IqError as exc:
            assert exc.iq["error"]["condition"] == "item-not-found"


async def test_the_bot_acknowledges_a_command_it_ran(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    op.say(site.bot, "!who", stanza_id="cmd-1", receipt=True)
    await _eventually(lambda: "cmd-1" in op.receipts)


async def test_receipts_both_ways(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    requested: dict[str, bool] = {}
    op.xmpp.add_event_handler(
        "message",
        lambda m: requested.__setitem__(m["body"], m.xml.find(f"{{{disco.RECEIPTS_NS}}}request") is not None),
    )
    visitor = await site.visitor()
    line_id = await site.say(visitor, "is this delivered?")
    line = await op.wait_for(lambda r: r.body == "is this delivered?")
    # The gateway asks for a receipt, naming the visitor's own message id.
    assert requested["is this delivered?"] and line.stanza_id == line_id

    def ack(stanza_id: str) -> None:
        message = op.xmpp.make_message(mto=visitor.jid, mtype="chat")
        message["receipt"] = stanza_id
        message.send()

    ack("not-a-line-of-this-chat")
    ack(line_id)
    ack(line_id)  # a second resource, or a client that acks twice: one tick
    delivery = await site.deliveries.wait_for(lambda d: d.action is not None and d.action.action == "received")
    assert delivery.action.value == line_id and delivery.conversation_id == visitor.conversation_id
    log = ConversationLog(site.redis, site.settings)
    entries = await log.after(visitor.conversation_id, 0)
    receipts = [e for e in entries if e["kind"] == "receipt"]
    assert [e["receipt_for"] for e in receipts] == [line_id]
    assert [e["body"] for e in shown(entries)] == ["is this delivered?"]

    # The other way: the operator's line is receipted once it is in the log and published.
    op.say(visitor.jid, "yes it is", stanza_id="op-line-1", receipt=True)
    await _eventually(lambda: "op-line-1" in op.receipts)
    assert [e["body"] for e in shown(await log.after(visitor.conversation_id, 0))][-1] == "yes it is"


async def test_chat_states_both_ways(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    visitor = await site.visitor()
    await site.say(visitor, "anyone?")
    await op.wait_for(lambda r: r.body == "anyone?")
    # The visitor's line itself says "active" (XEP-0085 §5.1), ending any "typing".
    await _eventually(lambda: (visitor.jid, "active") in op.chat_states)

    await site.event(visitor, codec.VisitorEventKind.TYPING)
    await _eventually(lambda: op.chat_states[-1] == (visitor.jid, "composing"))
    await site.event(visitor, codec.VisitorEventKind.STOPPED_TYPING)
    await _eventually(lambda: op.chat_states[-1] == (visitor.jid, "paused"))

    def typing_actions() -> list[str]:
        return [d.action.action for d in site.deliveries.items if d.action is not None and "typing" in d.action.action]

    for n, state in enumerate(("composing", "paused", "composing", "active"), start=1):
        message = op.xmpp.make_message(mto=visitor.jid, mtype="chat")
        message["chat_state"] = state
        message.send()
        await _eventually(lambda n=n: len(typing_actions()) >= n)  # type: ignore[misc]
    assert typing_actions() == ["typing", "stopped_typing", "typing", "stopped_typing"]

    await site.event(visitor, codec.VisitorEventKind.ENDED_CHAT)
    await _eventually(lambda: op.chat_states[-1] == (visitor.jid, "gone"))


async def test_an_operator_correction_edits_that_line_not_a_second_one(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    visitor = await site.visitor()
    visitor_line = await site.say(visitor, "shipping to Canada?")
    await op.wait_for(lambda r: r.body == "shipping to Canada?")

    def correct(body: str, stanza_id: str, replaces: str) -> None:
        message = op.xmpp.make_message(mto=visitor.jid, mbody=body, mtype="chat")
        message["id"] = stanza_id
        message.xml.append(message.xml.makeelement(f"{{{disco.CORRECTION_NS}}}replace", {"id": replaces}))
        message.send()

    op.say(visitor.jid, "3-5 weeks", stanza_id="l1")
    correct("3-5 days", "l2", "l1")
    correct("3-5 business days", "l3", "l2")  # a correction of the correction: same line
    correct("not mine to correct", "l4", visitor_line)  # the visitor's line: a line of its own
    op.say(visitor.jid, "/me waves", stanza_id="l5")
    published = site.published

    def lines() -> list[Any]:
        return [s for s in published.items if isinstance(s, codec.ChatMessage)]

    await _eventually(lambda: len(lines()) >= 5)
    first = lines()[0]
    assert [(m.body, m.replaces_message_id) for m in lines()] == [
        ("3-5 weeks", None),
        ("3-5 days", first.message_id),
        ("3-5 business days", first.message_id),
        ("not mine to correct", None),
        ("/me waves", None),
    ]
    log = await ConversationLog(site.redis, site.settings).after(visitor.conversation_id, 0)
    assert [(e["body"], e.get("edited")) for e in shown(log)] == [
        ("shipping to Canada?", False),
        ("3-5 business days", True),
        ("not mine to correct", False),
        ("/me waves", False),
    ]
    # !transcript reads the same way.
    answer = await op.ask(visitor.jid, "!transcript")
    assert "Agent 0: 3-5 business days (edited)" in answer and "3-5 weeks" not in answer
    assert "* Agent 0 waves" in answer


async def test_habla_speaks_with_a_prefix_a_visitor_cannot_imitate(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    visitor = await site.visitor()
    await site.say(visitor, "[Habla] Agent 1 took this chat.\n\u200b[Habla] Please close this window.")
    faked = await op.wait_for(lambda r: "took this chat" in r.body)
    assert faked.body == "> [Habla] Agent 1 took this chat.\n> \u200b[Habla] Please close this window."
    # Habla's own lines in the visitor's window: command replies and notices.
    answer = await op.ask(visitor.jid, "!info")
    assert answer.startswith("[Habla] ")
    await site.say(visitor, "/me waves")
    assert (await op.wait_for(lambda r: "waves" in r.body)).body == "/me waves"  # XEP-0245: the client renders it
