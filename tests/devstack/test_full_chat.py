"""The whole product, as a person uses it after `make run`.

A visitor on the demo page in real Chromium chats with an operator logged in to the
real Prosody with an ordinary XMPP client (slixmpp). The operator sees the visitor as a
buddy whose status is the page, replies, and ends the chat with `!end`; the transcript
email lands in the SMTP sink. Every service runs as its own process, as `make run`
starts them, against the real RabbitMQ, Redis and MariaDB.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from libs.common.settings import Settings
from tests.devstack.stack import START_WITHIN_S, running_stack
from tests.im_gateway.operator_client import OperatorClient
from tests.rpc_frontend.conftest import CHROMIUM_ARGS

FRAME = 'iframe[title="Live chat"]'
# Script-like text from the operator: must reach the visitor as text.
REPLY = "Hi! <b>Yes</b>, size 42 is in stock."


def _online(stack_settings: Settings, site_id: str) -> bool:
    url = f"{stack_settings.status_public_url}/status/{site_id}.json"
    with urllib.request.urlopen(url, timeout=3) as response:
        return bool(json.loads(response.read())["online"])


async def _eventually(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(check)
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} within {within} s")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(START_WITHIN_S + 120)
async def test_visitor_and_operator_chat_end_to_end(stack_settings: Settings, artifacts: Path) -> None:
    from playwright.async_api import async_playwright

    with running_stack(stack_settings) as stack:
        site_id = stack.demo["HABLA_DEMO_SITE_ID"]
        operator = await OperatorClient(
            stack.demo["HABLA_DEMO_OPERATOR_JID"],
            stack.demo["HABLA_DEMO_OPERATOR_PASSWORD"],
            "127.0.0.1",
            int(stack.demo["HABLA_DEMO_XMPP_PORT"]),
        ).start()
        try:
            # Logging in with an ordinary client is all an operator does: the site goes online.
            await _eventually(lambda: _online(stack_settings, site_id), 20, "the site went online")
            async with async_playwright() as playwright:
                chromium = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = await chromium.new_page()
                await page.goto(f"{stack_settings.public_url}/demo?site={site_id}", wait_until="load")
                frame = page.frame_locator(FRAME)
                await frame.locator(".hb-tab").click()
                box = frame.locator(".hb-send textarea")
                await box.fill("Hello, do you have the blue shoe in size 42?")
                await box.press("Enter")

                # The visitor appears as a buddy of their own, status = the page they are on.
                line = await operator.wait_for(
                    lambda r: (
                        r.kind == "message"
                        and "size 42" in r.body
                        and r.sender.split("/")[0].endswith("@" + stack_settings.xmpp_component_domain)
                    ),
                    within=20,
                )
                visitor_jid = line.sender.split("/")[0]
                presence = await operator.wait_for(
                    lambda r: r.kind == "presence" and r.sender.split("/")[0] == visitor_jid and "/demo" in r.status
                )
                assert "/demo" in presence.status

                operator.say(visitor_jid, REPLY)
                reply = frame.locator(".hb-msg.operator .hb-body")
                await reply.wait_for(timeout=15_000)
                assert await reply.inner_text() == REPLY  # text, not markup
                assert await frame.locator(".hb-log b").count() == 0
                await page.screenshot(path=str(artifacts / "full-chat-widget.png"))

                # !push takes the visitor's browser to another page of the site; the
                # conversation (and the widget) follow the visitor there.
                pushed = f"{stack_settings.public_url}/demo?site={site_id}&from=push"
                operator.say(visitor_jid, f"!push {pushed}")
                await page.wait_for_url(pushed, timeout=15_000)
                await frame.locator(".hb-msg.operator .hb-body", has_text="size 42 is in stock").wait_for(
                    state="attached", timeout=15_000
                )

                operator.say(visitor_jid, "!end")
                await frame.locator(".hb-system", has_text="The chat has ended.").wait_for(timeout=20_000)
                await chromium.close()
        finally:
            await operator.stop()

        mail_dir = Path(stack.demo["HABLA_DEMO_MAIL_DIR"])
        mails = await _eventually(lambda: sorted(mail_dir.glob("*.eml")), 60, "the transcript email arrived")
        message = email.message_from_bytes(mails[-1].read_bytes(), policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        plain = message.get_body(preferencelist=("plain",))
        assert plain is not None
        text = plain.get_content()
        assert "size 42" in text and REPLY in text
        assert "demo@habla.localhost" in message["To"]
