"""Visitor → operator → visitor through the real gateway, Prosody, RabbitMQ and Redis."""

from __future__ import annotations

import pytest

from libs.common import codec
from libs.common.state.conversations import ConversationLog
from tests.im_gateway.conftest import Site

# The basic path, on every server the gateway supports.
pytestmark = pytest.mark.both_servers


async def test_visitor_line_reaches_operator_and_reply_reaches_log_and_frontend(make_site) -> None:
    site: Site = await make_site(1)
    operator = site.operators[0]
    visitor = await site.visitor(page_url="https://shop.example/boots", title="Winter boots")
    await site.say(visitor, "Do you have size 44?")

    line = await operator.wait_for(lambda r: r.kind == "message" and r.body == "Do you have size 44?")
    assert line.sender.split("/")[0] == visitor.jid
    assert visitor.jid.endswith("@" + site.settings.xmpp_component_domain)
    # The gateway puts the chatting visitor in the roster (or, without XEP-0356, the
    # visitor asks once): only then does a real client show their presence.
    await site.contact(visitor)
    presence = await operator.wait_for(
        lambda r: r.kind == "presence" and r.sender.split("/")[0] == visitor.jid and r.ptype == ""
    )
    assert "Winter boots" in presence.status and "https://shop.example/boots" in presence.status

    operator.say(visitor.jid, "Yes, we do <b>!</b>")
    delivery = await site.deliveries.wait_for(lambda d: d.message is not None and d.message.body.startswith("Yes"))
    assert delivery.visitor_id == visitor.visitor_id
    assert delivery.conversation_id == visitor.conversation_id
    assert delivery.message.sender == codec.SenderKind.OPERATOR
    assert delivery.message.seq == 2
    assert delivery.message.operator_name == "Agent 0"
    assert delivery.message.operator_jid == operator.jid

    log = await ConversationLog(site.redis, site.settings).after(visitor.conversation_id, 0)
    assert [(e["sender"], e["body"], e["seq"]) for e in log] == [
        ("visitor", "Do you have size 44?", 1),
        ("operator", "Yes, we do <b>!</b>", 2),
    ]
    assert log[1]["operator_name"] == "Agent 0" and log[1]["kind"] == "message"

    # Archived: the operator's line and the "joined" action on habla.operator.
    archived = await site.published.wait_for(lambda s: isinstance(s, codec.ChatMessage) and s.body.startswith("Yes"))
    assert archived.seq == 2 and archived.internal in (None, False)
    await site.published.wait_for(lambda s: isinstance(s, codec.OperatorAction) and s.action == "joined")
