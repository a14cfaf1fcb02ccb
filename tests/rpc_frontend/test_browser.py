"""The widget in real Chromium (Playwright, Debian's /usr/bin/chromium).

Screenshots of the open widget go to tests/artifacts/."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import tornado.web

from libs.common import codec, snippets
from libs.common.settings import Settings
from tests.rpc_frontend.conftest import (
    Captured,
    MakeSite,
    RunningFrontend,
    StartFrontend,
    operator_action,
    operator_reply,
    set_online,
)
from tools.prosody import free_port

pytestmark = pytest.mark.browser

FRAME = 'iframe[title="Live chat"]'
# A deadline for a page's load event, not a promise of speed: generous for a loaded machine.
LOAD_DEADLINE_MS = 30_000
# Operator-supplied strings that would run script if ever treated as HTML.
XSS_BODY = '<img src=x onerror="window.top.hacked=1"><script>window.top.hacked=2</script> & "quotes"'
XSS_NAME = "<b onmouseover=alert(1)>Alice</b>"


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    yield page
    await context.close()


class HostSite:
    """A customer's web site on its own origin (http://localhost:<port>), serving pages we give it."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.port = free_port()
        site = self

        class Page(tornado.web.RequestHandler):
            def get(self, name: str) -> None:
                if name not in site.pages:
                    raise tornado.web.HTTPError(404)
                self.set_header("Content-Type", "text/html; charset=utf-8")
                self.finish(site.pages[name])

        self.server = tornado.web.Application([(r"/(.*)", Page)]).listen(self.port, address="127.0.0.1")

    def url(self, name: str) -> str:
        return f"http://localhost:{self.port}/{name}"


@pytest.fixture
async def host_site() -> AsyncIterator[HostSite]:
    site = HostSite()
    yield site
    site.server.stop()
    await site.server.close_all_connections()


async def test_demo_page_chat_end_to_end(
    page: Any,
    fe: RunningFrontend,
    make_site: MakeSite,
    make_bus: Any,
    settings: Settings,
    redis_client: aioredis.Redis,
    artifacts: Path,
) -> None:
    theme = {"colours": {"header_background": "#aa3300"}, "texts": {"welcome_title": "Talk to the Shoe shop"}}
    site_id = await make_site(["127.0.0.1"], theme=theme)
    captured = Captured()
    from libs.common import topology
    from libs.common.topology import QueueSpec

    bus = await make_bus("capture")
    await bus.consume(
        QueueSpec(f"test.browser.{site_id}", ((topology.VISITOR, f"{site_id}.#"),), durable=False, retry=False),
        captured.handler,
    )
    await set_online(redis_client, settings, site_id, True)

    await page.goto(f"{fe.url}/demo?site={site_id}", wait_until="load", timeout=LOAD_DEADLINE_MS)
    frame = page.frame_locator(FRAME)
    tab = frame.locator(".hb-tab")
    await tab.wait_for()
    assert (await tab.inner_text()).startswith("Talk to the Shoe shop")  # theme texts from MySQL, via Redis
    header = await frame.locator(".hb-tab").evaluate("e => getComputedStyle(e).backgroundColor")
    assert header == "rgb(170, 51, 0)"
    await tab.click()
    box_input = frame.locator(".hb-send textarea")
    await box_input.wait_for()
    await box_input.press_sequentially("Do you have size 42?")
    typing = await captured.next("VisitorEvent", kind=codec.VisitorEventKind.TYPING)
    await box_input.press("Enter")
    message = await captured.next("ChatMessage", body="Do you have size 42?")
    assert message.page_url == f"{fe.url}/demo?site={site_id}"
    assert message.visitor_id == typing.visitor_id
    await frame.locator(".hb-msg.visitor:not(.pending)").wait_for()

    await operator_action(bus, site_id, message.visitor_id, message.conversation_id, "typing", fe.settings.frontend_id)
    await frame.locator(".hb-typing", has_text="is typing").wait_for()
    await operator_reply(
        bus,
        settings,
        redis_client,
        site_id,
        message.visitor_id,
        message.conversation_id,
        XSS_BODY,
        fe.settings.frontend_id,
        name=XSS_NAME,
    )
    reply = frame.locator(".hb-msg.operator")
    await reply.wait_for()
    assert await reply.locator(".hb-body").inner_text() == XSS_BODY  # shown as text
    assert await reply.locator(".hb-who").inner_text() == XSS_NAME
    assert await frame.locator(".hb-log img, .hb-log script, .hb-log b").count() == 0
    assert await frame.locator(".hb-typing").inner_text() == ""  # a reply ends "typing"
    await operator_action(
        bus,
        site_id,
        message.visitor_id,
        message.conversation_id,
        "push",
        fe.settings.frontend_id,
        value="javascript:window.top.hacked=3",
    )
    await operator_action(
        bus,
        site_id,
        message.visitor_id,
        message.conversation_id,
        "push",
        fe.settings.frontend_id,
        value="https://shop.example/sale",
    )
    link = frame.locator(".hb-system a")
    await link.wait_for()
    assert (await link.count(), await link.get_attribute("href")) == (1, "https://shop.example/sale")
    await asyncio.sleep(0.3)
    assert await page.evaluate("window.hacked") is None
    await page.screenshot(path=str(artifacts / "widget-open.png"))

    await set_online(redis_client, settings, site_id, False)
    form = frame.locator(".hb-offline")
    await form.wait_for()
    await form.locator("input[name=name]").fill("Ann")
    await form.locator("input[name=email]").fill("ann@example.org")
    await form.locator("textarea[name=body]").fill("Please call me back.")
    await form.locator("button[type=submit]").click()
    offline = await captured.next("OfflineMessage", body="Please call me back.")
    assert (offline.name, offline.email, offline.visitor_id) == ("Ann", "ann@example.org", message.visitor_id)
    await frame.locator(".hb-done").wait_for()
    await page.screenshot(path=str(artifacts / "widget-offline-form.png"))


async def test_a_stalled_server_does_not_delay_the_host_pages_load(page: Any, host_site: HostSite) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    held: list[socket.socket] = []

    async def accept_and_never_answer() -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            held.append(conn)

    acceptor = asyncio.create_task(accept_and_never_answer())
    stalled = f"http://127.0.0.1:{listener.getsockname()[1]}"
    host_site.pages["stalled"] = (
        "<!doctype html><html><head><title>Shop</title>"
        f"{snippets.embed_snippet(stalled, '1234-12345-12-1234')}</head><body><h1>Shoes</h1></body></html>"
    )
    try:
        # The server never answers /embed.js: a snippet whose script the page's load
        # waited for would never let it fire, and goto would time out.
        await page.goto(host_site.url("stalled"), wait_until="load", timeout=LOAD_DEADLINE_MS)
        assert await page.evaluate("document.readyState") == "complete"
        deadline = time.monotonic() + LOAD_DEADLINE_MS / 1000
        while not held:  # the loader really was requested (and is held unanswered)
            assert time.monotonic() < deadline, "the snippet never asked for /embed.js"
            await asyncio.sleep(0.1)
        assert await page.evaluate("typeof window.habla") == "function"  # calls still queue
        await page.evaluate("habla('api.box.expand')")
        assert await page.evaluate("window.habla.q.length") == 1
    finally:
        acceptor.cancel()
        for conn in held:
            conn.close()
        listener.close()


async def test_javascript_api_queue_events_and_an_isolated_widget(
    page: Any,
    fe: RunningFrontend,
    site_id: str,
    host_site: HostSite,
    captured: Captured,
    settings: Settings,
    redis_client: aioredis.Redis,
    artifacts: Path,
) -> None:
    await set_online(redis_client, settings, site_id, True)
    # A hostile host page: broken built-ins and CSS that would wreck a widget living in it.
    host_site.pages["shop"] = (
        "<!doctype html><html><head><title>Shop</title>"
        "<style>div, button, textarea { display: none !important; color: red !important }</style>"
        "<script>Array.prototype.forEach = function () { throw new Error('host broke forEach') };"
        "window.JSON = null; window.fetch = null; window.WebSocket = null;</script>"
        "<script>window.events = [];</script>"
        f"{snippets.embed_snippet(fe.url, site_id)}"
        "<script>"
        "habla('api.chat.onReady', function () { events.push('ready') });"
        "habla('api.chat.onMessageToVisitor', function (e) { events.push('to visitor: ' + e.message.body) });"
        "habla('api.chat.onMessageToOperator', function (e) { events.push('to operator: ' + e.message.body) });"
        "habla('api.chat.onOperatorsAway', function () { events.push('away') });"
        "habla('api.chat.onOperatorsAvailable', function () { events.push('available') });"
        "habla('api.visitor.updateEmailAddress', {emailAddress: 'ann@example.org'});"
        "habla('api.box.expand');"
        "</script></head><body><h1>Shoes</h1></body></html>"
    )
    await page.goto(host_site.url("shop"), wait_until="load")
    frame = page.frame_locator(FRAME)
    await frame.locator(".hb-box").wait_for()  # expanded by the queued call
    await page.wait_for_function("window.events.indexOf('ready') >= 0")
    identified = await captured.next("VisitorEvent", kind=codec.VisitorEventKind.IDENTIFIED)
    assert identified.email == "ann@example.org"

    await page.evaluate("habla('api.chat.sendMessageToVisitor', {body: 'Welcome back <b>friend</b>!'})")
    await frame.locator(".hb-msg.operator", has_text="Welcome back <b>friend</b>!").wait_for()
    box_input = frame.locator(".hb-send textarea")
    await box_input.fill("Cross-origin hello")
    await box_input.press("Enter")
    message = await captured.next("ChatMessage", body="Cross-origin hello")
    assert message.page_url == host_site.url("shop")
    assert "to operator: Cross-origin hello" in await page.evaluate("window.events")

    # Keyboard: Escape shrinks to the tab, which keeps focus; an unread reply is counted.
    await box_input.press("Escape")
    tab = frame.locator(".hb-tab")
    await tab.wait_for()
    await operator_reply(
        fe.bus,
        settings,
        redis_client,
        site_id,
        message.visitor_id,
        message.conversation_id,
        "Hi Ann!",
        fe.settings.frontend_id,
    )
    await frame.locator(".hb-unread", has_text="1").wait_for()
    await page.wait_for_function("window.events.indexOf('to visitor: Hi Ann!') >= 0")
    await page.keyboard.press("Enter")  # the focused tab opens the box again
    await frame.locator(".hb-box").wait_for()
    assert await frame.locator(".hb-unread").is_hidden()
    await set_online(redis_client, settings, site_id, False)
    await page.wait_for_function("window.events.indexOf('away') >= 0")
    await page.screenshot(path=str(artifacts / "widget-on-hostile-host.png"))
    await set_online(redis_client, settings, site_id, True)
    await page.wait_for_function("window.events.indexOf('available') >= 0")
    await page.evaluate("habla('api.box.hide')")
    assert await page.locator(FRAME).is_hidden()
    await page.evaluate("habla('api.box.show')")
    assert await page.locator(FRAME).is_visible()


async def test_a_snippet_with_an_unknown_site_shows_nothing_and_says_why(
    page: Any, fe: RunningFrontend, host_site: HostSite
) -> None:
    warnings: list[str] = []
    page.on("console", lambda message: warnings.append(message.text))
    host_site.pages["wrong"] = (
        f"<!doctype html><title>x</title>{snippets.embed_snippet(fe.url, '1111-22222-33-4444')}<p>hi</p>"
    )
    await page.goto(host_site.url("wrong"), wait_until="load")
    for _ in range(50):
        if any("no site 1111-22222-33-4444" in w for w in warnings):
            break
        await asyncio.sleep(0.1)
    assert any("no site 1111-22222-33-4444" in w for w in warnings), warnings
    assert await page.locator(FRAME).is_hidden()


async def test_preview_applies_a_theme_posted_by_the_console_only(
    page: Any, start_frontend: StartFrontend, site_id: str, host_site: HostSite, artifacts: Path
) -> None:
    # The "console" here is the host site's origin: the only page allowed to frame the preview.
    fe = await start_frontend("preview", console_public_url=f"http://localhost:{host_site.port}")
    host_site.pages["console"] = f'<iframe id="p" src="{fe.url}/preview/{site_id}" width="420" height="640"></iframe>'
    host_site.pages["console-offline"] = host_site.pages["console"].replace(site_id, site_id + "?view=offline")
    await page.goto(host_site.url("console"))
    preview = page.frame_locator("#p")
    head = preview.locator(".hb-head")
    await head.wait_for()
    await preview.locator(".hb-msg.operator").wait_for()  # sample lines, no session
    # A message from anyone but the console (here: the preview page itself) is ignored.
    inner = next(frame for frame in page.frames if "/preview/" in frame.url)
    await inner.evaluate("window.postMessage({type: 'habla:theme', theme: {texts: {input_placeholder: 'Pwned'}}}, '*')")
    post = "theme => document.getElementById('p').contentWindow.postMessage({type: 'habla:theme', theme}, '*')"
    await page.evaluate(
        post,
        {
            "colours": {"header_background": "#ff0000", "header_text": "red; background: url(x)", "text": "#00ff00"},
            "texts": {"welcome_title": "<i>Hola</i>", "away_message": "Back soon"},
        },
    )
    await inner.wait_for_function("document.querySelector('.hb-title').textContent === '<i>Hola</i>'")
    assert await head.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 0, 0)"
    assert await head.evaluate("e => getComputedStyle(e).color") == "rgb(255, 255, 255)"  # invalid colour ignored
    assert await preview.locator(".hb-title i").count() == 0
    assert await inner.evaluate("document.querySelector('[placeholder]').placeholder") != "Pwned"
    await page.screenshot(path=str(artifacts / "widget-preview.png"))
    await page.goto(host_site.url("console-offline"))
    await preview.locator(".hb-offline").wait_for()
    await page.evaluate(post, {"texts": {"away_message": "Back at 9"}})
    await preview.locator(".hb-offline .hb-note", has_text="Back at 9").wait_for()


async def test_hosted_chat_page_over_long_poll_on_a_phone(
    browser: Any,
    fe: RunningFrontend,
    site_id: str,
    captured: Captured,
    settings: Settings,
    redis_client: aioredis.Redis,
    artifacts: Path,
) -> None:
    await set_online(redis_client, settings, site_id, True)
    context = await browser.new_context(viewport={"width": 390, "height": 780}, is_mobile=True, has_touch=True)
    try:
        page = await context.new_page()
        await page.add_init_script("window.WebSocket = undefined")  # a proxy that breaks WebSockets
        await page.goto(f"{fe.url}/chat/{site_id}")
        box_input = page.locator(".hb-send textarea")
        await box_input.fill("Sent from a phone")
        await box_input.press("Enter")
        message = await captured.next("ChatMessage", body="Sent from a phone")
        await operator_reply(
            fe.bus,
            settings,
            redis_client,
            site_id,
            message.visitor_id,
            message.conversation_id,
            "Reply by long-poll",
            fe.settings.frontend_id,
        )
        await page.locator(".hb-msg.operator", has_text="Reply by long-poll").wait_for()
        width = await page.locator(".hb-box").evaluate("e => e.getBoundingClientRect().width")
        assert width == 390
        await page.screenshot(path=str(artifacts / "hosted-chat-phone.png"))
    finally:
        await context.close()


async def test_embedded_widget_fills_a_phone_screen(
    browser: Any, fe: RunningFrontend, site_id: str, artifacts: Path
) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 780}, is_mobile=True, has_touch=True)
    try:
        page = await context.new_page()
        await page.goto(f"{fe.url}/demo?site={site_id}")
        frame = page.frame_locator(FRAME)
        await frame.locator(".hb-tab").click()
        await frame.locator(".hb-offline").wait_for()  # nobody online: the offline form
        size = await page.locator(FRAME).evaluate("e => [e.offsetWidth, e.offsetHeight]")
        assert size == [390, 780]
        await page.screenshot(path=str(artifacts / "widget-phone.png"))
    finally:
        await context.close()


async def test_a_line_sent_after_the_session_expired_still_arrives(
    page: Any,
    fe: RunningFrontend,
    site_id: str,
    captured: Captured,
    settings: Settings,
    redis_client: aioredis.Redis,
) -> None:
    await set_online(redis_client, settings, site_id, True)
    await page.goto(f"{fe.url}/chat/{site_id}")
    box_input = page.locator(".hb-send textarea")
    await box_input.fill("before")
    await box_input.press("Enter")
    first = await captured.next("ChatMessage", body="before")
    await redis_client.delete(settings.redis_key("visitor", first.visitor_id))  # 30 idle minutes later
    await box_input.fill("after")
    await box_input.press("Enter")
    second = await captured.next("ChatMessage", body="after", wait_s=20)
    assert second.visitor_id == first.visitor_id  # the same visitor, a renewed session
    await page.locator(".hb-msg.visitor:not(.pending)", has_text="after").wait_for()
    assert await page.locator(".hb-msg.failed").count() == 0


async def test_the_conversation_survives_navigation_without_doubles(
    page: Any,
    fe: RunningFrontend,
    site_id: str,
    captured: Captured,
    settings: Settings,
    redis_client: aioredis.Redis,
) -> None:
    await set_online(redis_client, settings, site_id, True)
    await page.goto(f"{fe.url}/demo?site={site_id}")
    frame = page.frame_locator(FRAME)
    await frame.locator(".hb-tab").click()
    box_input = frame.locator(".hb-send textarea")
    await box_input.fill("First page")
    await box_input.press("Enter")
    message = await captured.next("ChatMessage", body="First page")
    await operator_reply(
        fe.bus,
        settings,
        redis_client,
        site_id,
        message.visitor_id,
        message.conversation_id,
        "Answer on the first page",
        fe.settings.frontend_id,
    )
    await frame.locator(".hb-msg.operator").wait_for()

    await page.goto(f"{fe.url}/demo?site={site_id}&page=2")  # the visitor moves on
    view = await captured.next("PageView", url=f"{fe.url}/demo?site={site_id}&page=2")
    assert view.visitor_id == message.visitor_id  # same visitor: the token was kept
    await frame.locator(".hb-msg.operator").wait_for()  # still open, history restored
    bodies = await frame.locator(".hb-msg .hb-body").all_inner_texts()
    assert bodies == ["First page", "Answer on the first page"]
    assert await frame.locator(".hb-unread").is_hidden()  # history is not news
    await box_input.fill("Second page")
    await box_input.press("Enter")
    second = await captured.next("ChatMessage", body="Second page")
    assert (second.conversation_id, second.seq) == (message.conversation_id, 3)
    assert second.page_url == f"{fe.url}/demo?site={site_id}&page=2"


async def test_a_line_offered_again_under_a_new_seq_is_shown_once(
    page: Any,
    fe: RunningFrontend,
    site_id: str,
    captured: Captured,
    settings: Settings,
    redis_client: aioredis.Redis,
) -> None:
    """After Redis lost data, a line archived late is put back at the end of the log
    under a new seq (ConversationLog._fill_hole): a widget that already shows it (same
    message id) must not show it twice."""
    await set_online(redis_client, settings, site_id, True)
    await page.goto(f"{fe.url}/demo?site={site_id}")
    frame = page.frame_locator(FRAME)
    await frame.locator(".hb-tab").click()
    await frame.locator(".hb-send textarea").fill("Hello")
    await frame.locator(".hb-send textarea").press("Enter")
    message = await captured.next("ChatMessage", body="Hello")

    async def reply(body: str) -> None:
        await operator_reply(
            fe.bus,
            settings,
            redis_client,
            site_id,
            message.visitor_id,
            message.conversation_id,
            body,
            fe.settings.frontend_id,
        )

    await reply("Answer")
    await frame.locator(".hb-msg.operator").wait_for()
    # What the repair leaves in Redis: the same entry (same message id) at a new seq.
    lines_key = settings.redis_key("conv", message.conversation_id, "lines")
    meta_key = settings.redis_key("conv", message.conversation_id, "meta")
    newest: Any = await redis_client.zrange(lines_key, -1, -1, withscores=True)
    raw, seq = newest[0]
    again = {**json.loads(raw), "seq": int(seq) + 1}
    await redis_client.zadd(lines_key, {json.dumps(again): int(seq) + 1})
    await redis_client.hset(meta_key, "seq", int(seq) + 1)
    await reply("Next answer")  # wakes the widget, which reads both
    await frame.locator(".hb-msg.operator", has_text="Next answer").wait_for()
    bodies = await frame.locator(".hb-msg .hb-body").all_inner_texts()
    assert bodies == ["Hello", "Answer", "Next answer"]
