"""Broker trouble while a visitor sends: 503 + Retry-After (HTTP) or an error frame
(WebSocket), never a 500 or an aborted socket; the resend with the same message id
then goes through, once, under the same seq.

The broker is the shared one: only this run's vhost has its connections closed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import tornado.websocket

from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog
from services.rpc_frontend.handlers.receive import ReceiveSocket
from tests.rpc_frontend.conftest import Api, Captured, RunningFrontend, set_online


def close_vhost_connections(settings: Settings) -> None:
    vhost = urllib.parse.unquote(urllib.parse.urlparse(settings.amqp_url).path.lstrip("/"))
    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "chaos test"],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def _until(condition: object, wait_s: float = 30) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _broker_down(fe: RunningFrontend) -> None:
    close_vhost_connections(fe.settings)
    await _until(lambda: not fe.bus.connection.connected.is_set())


async def _broker_back(fe: RunningFrontend) -> None:
    """Until the bus is usable again: its channels are restored after the connection."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await fe.bus.ping()
            return
        except ConnectionError:
            assert time.monotonic() < deadline, "the bus did not come back"
            await asyncio.sleep(0.02)


async def test_post_answers_503_with_retry_after_and_the_resend_goes_through(
    fe: RunningFrontend, api: Api, captured: Captured
) -> None:
    visitor = await api.session()
    line = {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "during the outage"}
    await _broker_down(fe)
    response = await api.call("POST", "/messages", line)
    assert response.code == 503, response.body
    assert int(response.headers["Retry-After"]) > 0
    assert "same message_id" in json.loads(response.body)["error"]
    await _broker_back(fe)
    # Like the widget: resend after Retry-After until accepted (the connection is back
    # before its channels are restored, so the first resend may still get a 503).
    deadline = time.monotonic() + 30
    while (response := await api.call("POST", "/messages", line)).code == 503:
        assert time.monotonic() < deadline, "still 503 long after the broker came back"
        await asyncio.sleep(min(float(response.headers["Retry-After"]), 1.0))
    assert response.code == 200, (response.code, response.body)
    sent = json.loads(response.body)
    message = await captured.next("ChatMessage", message_id=line["message_id"], wait_s=30)
    assert message.seq == sent["seq"] == 1
    again = await api.ok("POST", "/messages", line)
    assert again["seq"] == sent["seq"] and again["duplicate"] is True


async def test_websocket_send_gets_an_error_frame_and_stays_open(
    fe: RunningFrontend, api: Api, captured: Captured, site_id: str
) -> None:
    visitor = await api.session()
    url = f"{fe.url.replace('http', 'ws')}/api/sites/{site_id}/ws?token={visitor['token']}&after=0"
    socket = await tornado.websocket.websocket_connect(url)
    message_id = uuid.uuid4().hex

    async def frame_of(*kinds: str) -> dict[str, object]:
        while True:
            raw = await asyncio.wait_for(socket.read_message(), 20)
            assert raw is not None, "socket closed"
            event: dict[str, object] = json.loads(raw)
            if event.get("type") in kinds:
                return event

    async def frame(kind: str) -> dict[str, object]:
        return await frame_of(kind)

    await _broker_down(fe)
    socket.write_message(json.dumps({"type": "send", "message_id": message_id, "body": "hello?"}))
    error = await frame("error")
    assert error["status"] == 503 and error["message_id"] == message_id and error["retry_after"]
    await _broker_back(fe)
    deadline = time.monotonic() + 30
    while True:  # resend after each error frame, as the widget does
        socket.write_message(json.dumps({"type": "send", "message_id": message_id, "body": "hello?"}))
        reply = await frame_of("sent", "error")
        if reply["type"] == "sent":
            break
        assert time.monotonic() < deadline, "still refused long after the broker came back"
        await asyncio.sleep(0.5)
    sent = reply
    assert sent["message_id"] == message_id
    message = await captured.next("ChatMessage", message_id=message_id, wait_s=30)
    assert message.seq == sent["seq"]
    socket.close()


@pytest.mark.browser
async def test_the_widget_resends_through_a_broker_outage_and_never_takes_the_echo_as_sent(
    browser: Any,
    fe: RunningFrontend,
    site_id: str,
    captured: Captured,
    settings: Settings,
    redis_client: aioredis.Redis,
) -> None:
    await set_online(redis_client, settings, site_id, True)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{fe.url}/chat/{site_id}")
        box_input = page.locator(".hb-send textarea")
        await box_input.fill("before the outage")
        await box_input.press("Enter")
        first = await captured.next("ChatMessage", body="before the outage")

        await _broker_down(fe)
        await box_input.fill("during the outage")
        await box_input.press("Enter")
        # The line is in the Redis log (appended before the publish failed), so the
        # widget hears it back; it must stay pending: the broker never confirmed it.
        log = ConversationLog(redis_client, settings)
        await _until_async(lambda: _logged(log, first.conversation_id, "during the outage"))
        # Its WebSocket drops (as an instance restart does) and the widget reconnects
        # within a second, before its resend timer: the catch-up brings its own line.
        for listener in fe.frontend.hub.listeners():
            if isinstance(listener, ReceiveSocket):
                listener.shutdown()
        await asyncio.sleep(1.6)
        if not fe.bus.connection.connected.is_set():
            assert await page.locator(".hb-msg.visitor.pending", has_text="during the outage").count() == 1
        await _broker_back(fe)
        message = await captured.next("ChatMessage", body="during the outage", wait_s=40)
        assert message.conversation_id == first.conversation_id
        await page.locator(".hb-msg.visitor:not(.pending)", has_text="during the outage").wait_for(timeout=30_000)
        assert await page.locator(".hb-msg.failed").count() == 0
        # Resent with the same id: one line in the log, one bubble on the page.
        entries = await log.after(first.conversation_id, 0)
        assert [e["body"] for e in entries] == ["before the outage", "during the outage"]
        assert await page.locator(".hb-msg.visitor").count() == 2
    finally:
        await context.close()


async def _logged(log: ConversationLog, conversation_id: str, body: str) -> bool:
    return any(e.get("body") == body for e in await log.after(conversation_id, 0))


async def _until_async(condition: Callable[[], Awaitable[bool]], wait_s: float = 30) -> None:
    deadline = time.monotonic() + wait_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_line_whose_widget_is_gone_is_published_again_by_the_sweep(
    fe: RunningFrontend, api: Api, captured: Captured, redis_client: aioredis.Redis, settings: Settings
) -> None:
    visitor = await api.session()
    sent = await api.ok("POST", "/messages", {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "a"})
    assert await fe.frontend.chat.unconfirmed.sweep(grace_s=0) == 0  # confirmed lines are not marked
    await captured.next("ChatMessage", body="a")

    line = {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "then the page closed"}
    await _broker_down(fe)
    assert (await api.call("POST", "/messages", line)).code == 503
    await _broker_back(fe)
    # The widget never resends (its page is gone): the sweep publishes what the log holds.
    assert await fe.frontend.chat.unconfirmed.sweep(grace_s=0) == 1
    message = await captured.next("ChatMessage", message_id=line["message_id"], wait_s=30)
    assert (message.body, message.seq, message.conversation_id) == (line["body"], 2, sent["conversation_id"])
    assert await fe.frontend.chat.unconfirmed.sweep(grace_s=0) == 0  # once
