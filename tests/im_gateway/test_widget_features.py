"""What the visitor sees of the operator's client features, in real Chromium: an
operator on Prosody (a real client connection) corrects a line, acknowledges the
visitor's line, types and writes /me; the widget shows an edit in place, a tick, the
typing line and an action, and still does after a reload (all from the log)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.im_gateway import disco
from tests.im_gateway.conftest import Site
from tests.rpc_frontend.conftest import StartFrontend, browser, start_frontend  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


async def test_widget_shows_corrections_ticks_typing_and_actions(
    make_site: Any,
    start_frontend: StartFrontend,  # noqa: F811
    browser: Any,  # noqa: F811
    artifacts: Path,
) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    fe = await start_frontend()
    context = await browser.new_context(viewport={"width": 900, "height": 800})
    page = await context.new_page()
    try:
        await page.goto(f"{fe.url}/chat/{site.site_id}", wait_until="load")
        box = page.locator(".hb-send textarea")
        await box.wait_for(timeout=15_000)
        await box.fill("Do you ship to Canada?")
        await box.press("Enter")

        line = await op.wait_for(lambda r: r.kind == "message" and r.body == "Do you ship to Canada?", within=20)
        visitor_jid = line.sender.split("/")[0]

        # The operator's client acknowledges the line: the visitor sees a tick.
        receipt = op.xmpp.make_message(mto=visitor_jid, mtype="chat")
        receipt["receipt"] = line.stanza_id
        receipt.send()
        await page.locator(".hb-msg.visitor .hb-tick").wait_for(timeout=15_000)

        typing = op.xmpp.make_message(mto=visitor_jid, mtype="chat")
        typing["chat_state"] = "composing"
        typing.send()
        await page.locator(".hb-typing", has_text="is typing").wait_for(timeout=15_000)

        op.say(visitor_jid, "We ship in 3-5 weeks", stanza_id="l1")
        operator_lines = page.locator(".hb-msg.operator")
        await operator_lines.locator(".hb-body", has_text="3-5 weeks").wait_for(timeout=15_000)
        assert await page.locator(".hb-typing").inner_text() == ""  # the line ends "typing"

        correction = op.xmpp.make_message(mto=visitor_jid, mbody="We ship in 3-5 business days", mtype="chat")
        correction["id"] = "l2"
        correction.xml.append(correction.xml.makeelement(f"{{{disco.CORRECTION_NS}}}replace", {"id": "l1"}))
        correction.send()
        await operator_lines.locator(".hb-body", has_text="3-5 business days").wait_for(timeout=15_000)

        op.say(visitor_jid, "/me waves", stanza_id="l3")
        await page.locator(".hb-msg.operator.action .hb-body", has_text="waves").wait_for(timeout=15_000)

        async def check() -> None:
            bodies = await operator_lines.locator(".hb-body").all_inner_texts()
            assert bodies == ["We ship in 3-5 business days", "* Agent 0 waves"]  # edited in place, no 2nd line
            assert "(edited)" in await operator_lines.first.inner_text()
            assert "(edited)" not in await operator_lines.nth(1).inner_text()
            assert await page.locator(".hb-msg.visitor .hb-tick").count() == 1

        await check()
        await page.screenshot(path=str(artifacts / "widget-client-features.png"))
        # Everything comes from the conversation log: a reload shows the same.
        await page.reload(wait_until="load")
        await operator_lines.locator(".hb-body", has_text="waves").wait_for(timeout=15_000)
        await page.locator(".hb-msg.visitor .hb-tick").wait_for(timeout=15_000)
        await check()
    finally:
        await context.close()
