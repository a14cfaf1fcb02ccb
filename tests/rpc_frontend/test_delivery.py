"""Receiving over WebSockets from two frontend instances sharing Redis and RabbitMQ:
a visitor who moves from instance A to B gets exactly what was missed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
import tornado.httpclient
import tornado.websocket

from libs.common import db
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog
from libs.common.state.sessions import VisitorSessions
from tests.rpc_frontend.conftest import (
    Api,
    RunningFrontend,
    StartFrontend,
    operator_action,
    operator_reply,
    set_online,
)


class Socket:
    def __init__(self, conn: tornado.websocket.WebSocketClientConnection) -> None:
        self.conn = conn
        self.seqs: list[int] = []

    @classmethod
    async def open(
        cls, fe: RunningFrontend, site_id: str, token: str, conversation_id: str = "", after: int = 0
    ) -> Socket:
        query = f"token={token}&conversation_id={conversation_id}&after={after}"
        url = f"{fe.url.replace('http', 'ws')}/api/sites/{site_id}/ws?{query}"
        return cls(await tornado.websocket.websocket_connect(url))

    async def until(self, kind: str, wait_s: float = 10) -> dict[str, Any]:
        while True:
            raw = await asyncio.wait_for(self.conn.read_message(), wait_s)
            assert raw is not None, "socket closed"
            event: dict[str, Any] = json.loads(raw)
            if event["type"] == "entries":
                self.seqs.extend(e["seq"] for e in event["entries"])
            if event["type"] == kind:
                return event

    async def send(self, payload: dict[str, Any]) -> None:
        await self.conn.write_message(json.dumps(payload))


async def test_visitor_moving_between_instances_gets_exactly_the_missed_lines(
    start_frontend: StartFrontend, site_id: str, settings: Settings, redis_client: aioredis.Redis
) -> None:
    a, b = await start_frontend("a"), await start_frontend("b")
    api = Api(a.url, site_id)
    visitor = await api.session()
    vid, token = visitor["visitor_id"], visitor["token"]
    sent = await api.ok(
        "POST", "/messages", {"token": token, "message_id": uuid.uuid4().hex, "body": "Where is my order?"}
    )
    cid = sent["conversation_id"]
    sessions = VisitorSessions(redis_client, settings)

    async def reply(text: str) -> int:
        # As the gateway does: deliver to whichever instance the session names now.
        holder = (await sessions.get(vid) or {})["frontend_id"]
        return await operator_reply(a.bus, settings, redis_client, site_id, vid, cid, text, holder)

    on_a = await Socket.open(a, site_id, token, cid, 0)
    await on_a.until("synced")
    assert on_a.seqs == [1]
    assert (await sessions.get(vid) or {})["frontend_id"] == a.settings.frontend_id
    await reply("Let me check.")
    await on_a.until("entries")
    await operator_action(a.bus, site_id, vid, cid, "typing", a.settings.frontend_id)
    assert (await on_a.until("typing"))["typing"] is True
    on_a.conn.close()

    await reply("It left on Monday.")  # delivered to A, where nobody listens now
    await reply("Tracking: 123.")
    on_b = await Socket.open(b, site_id, token, cid, on_a.seqs[-1])
    await on_b.until("synced")
    assert on_b.seqs == [3, 4]  # exactly the missed ones
    assert (await sessions.get(vid) or {})["frontend_id"] == b.settings.frontend_id
    await reply("Anything else?")  # now delivered to B
    await on_b.until("entries")
    assert on_a.seqs + on_b.seqs == [1, 2, 3, 4, 5]  # nothing lost, nothing twice

    # A retried send over the socket (same id) is stored once.
    message_id = uuid.uuid4().hex
    await on_b.send({"type": "send", "message_id": message_id, "body": "No, thanks"})
    first = await on_b.until("sent")
    await on_b.send({"type": "send", "message_id": message_id, "body": "No, thanks"})
    second = await on_b.until("sent")
    assert (first["seq"], first["duplicate"], second["seq"], second["duplicate"]) == (6, False, 6, True)
    assert [e["seq"] for e in await ConversationLog(redis_client, settings).after(cid, 0)] == [1, 2, 3, 4, 5, 6]
    on_b.conn.close()


async def test_closed_conversation_tail_then_a_new_one(
    fe: RunningFrontend, site_id: str, settings: Settings, redis_client: aioredis.Redis
) -> None:
    api = Api(fe.url, site_id)
    visitor = await api.session()
    vid, token = visitor["visitor_id"], visitor["token"]
    first = await api.ok("POST", "/messages", {"token": token, "message_id": uuid.uuid4().hex, "body": "one"})
    sock = await Socket.open(fe, site_id, token)
    await sock.until("synced")
    # What the worker's closer does: drop the conversation from the session, log a
    # system line, tell the visitor's frontend.
    await redis_client.hdel(settings.redis_key("visitor", vid), "conversation_id")
    log = ConversationLog(redis_client, settings)
    await log.append(
        first["conversation_id"],
        uuid.uuid4().hex,
        {"kind": "system", "sender": "system", "body": "The chat has ended.", "sent_at_ms": 1, "operator_name": None},
    )
    await operator_action(fe.bus, site_id, vid, first["conversation_id"], "ended", fe.settings.frontend_id)
    ended = await sock.until("entries")
    assert [e["body"] for e in ended["entries"]] == ["The chat has ended."]
    second = await api.ok("POST", "/messages", {"token": token, "message_id": uuid.uuid4().hex, "body": "two"})
    assert second["conversation_id"] != first["conversation_id"] and second["seq"] == 1
    fresh = await sock.until("entries")
    assert (fresh["conversation_id"], [e["body"] for e in fresh["entries"]]) == (second["conversation_id"], ["two"])
    sock.conn.close()


async def test_site_status_changes_reach_connected_widgets(
    fe: RunningFrontend, site_id: str, settings: Settings, redis_client: aioredis.Redis
) -> None:
    visitor = await Api(fe.url, site_id).session()
    sock = await Socket.open(fe, site_id, visitor["token"])
    assert (await sock.until("status"))["online"] is False
    await sock.until("synced")
    await set_online(redis_client, settings, site_id, True)
    assert (await sock.until("status"))["online"] is True
    await set_online(redis_client, settings, site_id, False)
    assert (await sock.until("status"))["online"] is False
    sock.conn.close()


async def test_websocket_refuses_bad_tokens_and_foreign_origins(fe: RunningFrontend, make_site: Any) -> None:
    site = await make_site(["shop.example"])
    url = f"{fe.url.replace('http', 'ws')}/api/sites/{site}/ws?token=nope"
    request = tornado.httpclient.HTTPRequest(url, headers={"Origin": "https://evil.example"})
    try:
        await tornado.websocket.websocket_connect(request)
        raise AssertionError("connected")
    except tornado.httpclient.HTTPClientError as exc:
        assert exc.code == 403
    # A bad or expired token: accepted, then closed with 4401 (a browser sees close codes, not 401s).
    conn = await tornado.websocket.websocket_connect(url)
    assert await asyncio.wait_for(conn.read_message(), 5) is None
    assert conn.close_code == 4401
    conn.close()


async def test_a_saved_theme_reaches_open_widgets(fe: RunningFrontend, site_id: str, engine: Any) -> None:
    visitor = await Api(fe.url, site_id).session()
    sock = await Socket.open(fe, site_id, visitor["token"])
    await sock.until("synced")
    new_theme = {"colours": {"header_background": "#123456"}, "texts": {"welcome_title": "Hello <there>"}}

    def save() -> None:  # what the console does: write MySQL, then invalidate
        with engine.begin() as conn:
            conn.execute(sa.update(db.sites).where(db.sites.c.id == site_id).values(theme=new_theme))

    await asyncio.to_thread(save)
    await fe.frontend.sites.invalidate(site_id)
    event = await sock.until("theme")
    assert event["theme"]["colours"]["header_background"] == "#123456"
    assert event["theme"]["texts"]["welcome_title"] == "Hello <there>"
    assert event["theme"]["texts"]["input_placeholder"]  # merged over the defaults
    sock.conn.close()


async def test_socket_sends_get_the_same_bad_input_answers(start_frontend: StartFrontend, site_id: str) -> None:
    fe = await start_frontend("wslimits", visitor_messages_per_min=2)
    visitor = await Api(fe.url, site_id).session()
    sock = await Socket.open(fe, site_id, visitor["token"])
    await sock.until("synced")
    too_long = "x" * (fe.settings.max_message_chars + 1)
    await sock.send({"type": "send", "message_id": uuid.uuid4().hex, "body": too_long})
    assert (await sock.until("error"))["status"] == 413
    await sock.send({"type": "send", "message_id": "bad id!", "body": "hi"})
    assert (await sock.until("error"))["status"] == 400
    await sock.send({"type": "send", "message_id": uuid.uuid4().hex, "body": "over the limit"})
    limited = await sock.until("error")
    assert limited["status"] == 429 and 1 <= limited["retry_after"] <= 60
    await sock.conn.write_message("{not json")
    assert (await sock.until("error"))["status"] == 400
    sock.conn.close()


async def test_a_visitors_own_line_is_echoed_from_the_line_itself_exactly_once(
    fe: RunningFrontend, site_id: str, settings: Settings, redis_client: aioredis.Redis, monkeypatch: Any
) -> None:
    """The sender's socket gets its line back without reading the log when it is the
    next entry the socket lacks; the entry is the one the log holds, byte for byte; a
    second tab, an operator line in between, a repaired log and a reconnect still see
    every entry exactly once."""
    api = Api(fe.url, site_id)
    visitor = await api.session()
    vid, token = visitor["visitor_id"], visitor["token"]
    first = await api.ok("POST", "/messages", {"token": token, "message_id": uuid.uuid4().hex, "body": "hello"})
    cid = first["conversation_id"]
    log = ConversationLog(redis_client, settings)
    reads: list[int] = []
    after = fe.frontend.chat.log.after

    async def counted(conversation_id: str, after_seq: int, limit: int = 500) -> list[dict[str, Any]]:
        reads.append(after_seq)
        return await after(conversation_id, after_seq, limit)

    monkeypatch.setattr(fe.frontend.chat.log, "after", counted)
    tab = await Socket.open(fe, site_id, token, cid, 0)
    await tab.until("synced")
    other = await Socket.open(fe, site_id, token, cid, 0)
    await other.until("synced")

    async def say(body: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        await tab.send({"type": "send", "message_id": uuid.uuid4().hex, "body": body})
        sent = await tab.until("sent")
        entries = await tab.until("entries")
        await other.until("entries")
        return sent, entries["entries"]

    odd = 'Größe 44? "quoted" </script> \\ \u2028 \U0001f600 \x01'
    reads.clear()
    sent, echoed = await say(odd)
    assert reads == [1]  # the other tab's read; the sender's socket read nothing
    assert echoed == await log.after(cid, sent["seq"] - 1, 1)  # exactly what the log holds
    assert echoed[0]["body"] == odd and echoed[0]["seq"] == 2

    # An operator's line the sender's socket has not read yet: its own line is read
    # with it (the socket is behind), in order.
    await operator_reply(fe.bus, settings, redis_client, site_id, vid, cid, "Sure.", "nobody-else")
    sent, entries = await say("thanks")
    assert [e["seq"] for e in entries] == [3, 4] and sent["seq"] == 4

    # Right after a repair the log's readers look for lines archived late: read.
    meta = settings.redis_key("conv", cid, "meta")
    await redis_client.hset(meta, mapping={"hole": 4, "hole_until": int(time.time()) + 60})
    reads.clear()
    await say("during the watch")
    assert len(reads) == 2  # both sockets read
    await redis_client.hdel(meta, "hole", "hole_until")

    tab.conn.close()
    await api.ok("POST", "/messages", {"token": token, "message_id": uuid.uuid4().hex, "body": "from another page"})
    back = await Socket.open(fe, site_id, token, cid, tab.seqs[-1])
    await back.until("synced")
    await back.send({"type": "send", "message_id": uuid.uuid4().hex, "body": "back again"})
    await back.until("sent")
    await back.until("entries")
    assert tab.seqs + back.seqs == [1, 2, 3, 4, 5, 6, 7]  # nothing lost, nothing twice
    while other.seqs[-1] < 7:
        await other.until("entries")
    assert other.seqs == [1, 2, 3, 4, 5, 6, 7]
    other.conn.close()
    back.conn.close()
