"""Nothing a visitor sends can end the component stream (issue 10, item 2).

Every C0 control character, lone surrogates and a 100 KB line, in a visitor line, a
page title and a name: the operator receives the cleaned text and the gateway's
component stream is never lost (reconnects counted: 0)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from libs.common import codec
from libs.common.xmlsafe import clean
from services.im_gateway.component import on
from tests.im_gateway.conftest import Site

# What makes a server close a component stream is the server's to decide.
pytestmark = pytest.mark.both_servers

C0 = "".join(chr(c) for c in range(0x20))
SURROGATES = "\ud800\udbff\udc00\udfff\ufffe\uffff"


def _as_parsed(text: str) -> str:
    """What an XML parser hands the client: CR and CRLF become LF (XML 1.0 §2.11)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


async def test_control_characters_and_huge_lines_never_cut_the_stream(make_site) -> None:
    site: Site = await make_site(1)
    operator = site.operators[0]
    component = site.gateway.component
    lost: list[Any] = []
    on(component, "disconnected", lost.append)
    try:
        title = f"Checkout{C0}step 2"
        visitor = await site.visitor(page_url=f"https://shop.example/pay?x={C0}", title=title, name=f"Jane{C0}Doe")
        body = f"hello{C0}world"
        await site.say(visitor, body)
        line = await operator.wait_for(lambda r: r.kind == "message" and r.body.startswith("hello"), within=15)
        assert line.body == _as_parsed(clean(body)) == "hello\t\n\nworld"
        await site.contact(visitor)  # strict client: presence only from roster contacts
        # The page title, on one line, in the visitor's presence status.
        presence = await operator.wait_for(
            lambda r: r.kind == "presence" and r.sender.split("/")[0] == visitor.jid and "Checkout" in r.status
        )
        assert presence.status.startswith("Checkout step 2 — https://shop.example/pay?x=")
        assert not any(ch in presence.status for ch in C0)

        # The name: the [Habla] line when the visitor introduces themselves, and !info.
        await site.event(visitor, codec.VisitorEventKind.IDENTIFIED, name=f"Jane{C0}Doe")
        intro = await operator.wait_for(lambda r: r.kind == "message" and "introduced" in r.body)
        assert intro.body.endswith("Jane Doe")
        info = await operator.ask(visitor.jid, "!info")
        assert "  name: Jane Doe" in info.splitlines()

        # A 100 KB line with control characters all along it.
        huge = ("\x01\x02\x07" + "x" * 97 + "\n") * 1000
        await site.say(visitor, huge)
        got = await operator.wait_for(lambda r: r.kind == "message" and r.body.startswith("x" * 97), within=20)
        assert got.body == clean(huge) and len(got.body) == 98_000

        # Lone surrogates cannot travel in a Thrift string (they are not UTF-8), so
        # they are handed to the component directly, in a body and a status.
        component.chat(visitor.jid, operator.jid, f"sur{SURROGATES}rogates")
        component.presence(visitor.jid, operator.jid, show="chat", status=f"Title{SURROGATES}\r\nfake line")
        await operator.wait_for(lambda r: r.kind == "message" and r.body == "surrogates")
        await operator.wait_for(lambda r: r.kind == "presence" and r.status == "Title fake line")

        # And the stream carries on: a normal line after all of it.
        await site.say(visitor, "still there?")
        await operator.wait_for(lambda r: r.kind == "message" and r.body == "still there?")
        await asyncio.sleep(0.5)  # a close by the server would arrive by now
        assert lost == [] and component.ready.is_set()
    finally:
        component.del_event_handler("disconnected", lost.append)
