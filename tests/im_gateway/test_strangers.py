"""Stanzas from JIDs that are not operators of the site get an XMPP error and change nothing."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from libs.common.state.conversations import ConversationLog
from tests.im_gateway.conftest import Site, connect_operator


# Which forged senders reach the component is the server's routing.
@pytest.mark.both_servers
async def test_strangers_get_errors_and_change_nothing(make_site, xmpp_server, gateway_settings) -> None:
    site: Site = await make_site(1)
    visitor = await site.visitor()
    await site.say(visitor, "hello operator")
    await site.operators[0].wait_for(lambda r: r.body == "hello operator")
    stranger = await connect_operator(xmpp_server, gateway_settings, f"stranger-{uuid.uuid4().hex[:6]}")
    try:
        assert await stranger.ask(site.bot, "!who") == "error:forbidden"
        assert await stranger.ask(visitor.jid, "I am not staff") == "error:forbidden"
        stranger.xmpp.send_presence_subscription(pto=site.bot)
        refused = await stranger.wait_for(lambda r: r.kind == "presence" and r.sender.startswith(site.bot))
        assert refused.ptype == "error" and refused.error == "forbidden"
        stranger.xmpp.send_presence(pto=site.bot)  # directed availability to the bot
        await asyncio.sleep(0.5)
        assert stranger.jid not in await site.gateway.desk.availability.available_operators(site.site_id)
        assert not stranger.messages_from(visitor.jid)
    finally:
        await stranger.stop()
    log = await ConversationLog(site.redis, site.settings).after(visitor.conversation_id, 0)
    assert [e["body"] for e in log] == ["hello operator"]
    assert not site.deliveries.items


async def test_an_operator_never_reaches_another_sites_visitors(make_site) -> None:
    ours: Site = await make_site(1)
    theirs: Site = await make_site(1)
    their_visitor = await theirs.visitor(page_url="https://other.example/secret", title="Secret")
    answer = await ours.operators[0].ask(their_visitor.jid, "hello from the wrong site")
    assert answer == "error:forbidden"
    who = await ours.operators[0].ask(ours.bot, "!who")
    assert their_visitor.jid not in who and "secret" not in who.lower()
    assert await ours.operators[0].ask(theirs.bot, "!who") == "error:forbidden"
    assert not theirs.deliveries.items
