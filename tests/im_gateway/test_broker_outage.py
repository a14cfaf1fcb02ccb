"""The broker drops the gateway's connections while an operator writes (issue 14 item 3).

`rabbitmqctl close_all_connections` on the run's vhost: the gateway's publishes of
operator lines (archive + the visitor's frontend, in the background) fail until its
robust connection is back. Each line is retried and then delivered (receipt): none is
dropped in silence. A line the log already holds is never bounced (the visitor reads the
log, so an operator who resent it would be seen twice): past HABLA_GATEWAY_LINE_RETRY_S
the operator is told it is delayed, and its receipt follows when the broker is back."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from libs.common import state
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import SiteStatusReader
from libs.common.state.sessions import VisitorSessions
from services.im_gateway.inbound import DELAYED
from services.im_gateway.visitors import VisitorNames
from tests.im_gateway.conftest import create_site
from tests.im_gateway.isolated import Isolated, isolated_gateway_env, site_online, wait_until
from tests.im_gateway.operator_client import OperatorClient
from tools import prosody

LINES = 50
EVERY_S = 0.2
CUT_AT = 10  # after this many lines


@dataclass
class Chat:
    env: Isolated
    vhost: str
    redis: aioredis.Redis
    operator: OperatorClient
    visitor_jid: str
    conversation_id: str
    gateway: subprocess.Popen[bytes]


@contextlib.asynccontextmanager
async def one_chat(settings, engine, artifacts, retry_s: int) -> AsyncIterator[Chat]:
    """A gateway, one strict operator and one visitor's open conversation, the first
    operator line receipted (everything is up before the broker is disturbed)."""
    async with isolated_gateway_env(
        settings, artifacts, presence_heartbeat_s=1, presence_ttl_s=30, gateway_line_retry_s=retry_s
    ) as env:
        s = env.settings
        vhost = urllib.parse.unquote(urllib.parse.urlsplit(s.amqp_url).path.lstrip("/"))
        redis = state.connect(s)
        user, password = f"op-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:12]
        await asyncio.to_thread(prosody.register, env.prosody, user, password)
        site_id = await create_site(engine, [(f"{user}@{s.xmpp_domain}", "Kim")])
        gateway = env.start_gateway("gateway")
        operator = await OperatorClient(f"{user}@{s.xmpp_domain}", password, "127.0.0.1", s.xmpp_c2s_port).start()
        try:
            await wait_until(lambda: site_online(SiteStatusReader(redis, s), site_id), within=30)
            sessions = VisitorSessions(redis, s)
            visitor_id = sessions.new_visitor_id()
            conversation_id = uuid.uuid4().hex
            await sessions.save(
                visitor_id, site_id, {"frontend_id": s.frontend_id, "conversation_id": conversation_id,
                                      "page_url": "https://shop.example/", "page_title": "Home"},
            )  # fmt: skip
            visitor_jid = await VisitorNames(redis, s).jid_of(visitor_id)
            operator.say(visitor_jid, "warm-up", stanza_id="warm-up", receipt=True)
            await wait_until(lambda: "warm-up" in operator.receipts, 20)
            yield Chat(env, vhost, redis, operator, visitor_jid, conversation_id, gateway)
        finally:
            env.terminate(gateway)
            await operator.stop()
            await redis.aclose()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.mark.slow
async def test_broker_connections_closed_every_operator_line_delivered_or_bounced(settings, engine, artifacts) -> None:
    async with one_chat(settings, engine, artifacts, retry_s=20) as chat:
        operator = chat.operator
        for n in range(LINES):
            operator.say(chat.visitor_jid, f"o{n}", stanza_id=f"o{n}", receipt=True)
            if n == CUT_AT:
                await asyncio.to_thread(_rabbitmqctl, "close_all_connections", "-p", chat.vhost, "test: broker outage")
            await asyncio.sleep(EVERY_S)
        ids = [f"o{n}" for n in range(LINES)]

        def bounced() -> set[str]:
            return {r.stanza_id for r in operator.received if r.kind == "message" and r.error}

        started = time.monotonic()
        with contextlib.suppress(TimeoutError):  # what is still missing is counted below
            await wait_until(lambda: all(i in operator.receipts or i in bounced() for i in ids), 60)
        settled_s = time.monotonic() - started
        delivered = [i for i in ids if i in operator.receipts]
        silent = [i for i in ids if i not in operator.receipts and i not in bounced()]
        print(
            f"\nbroker connections closed after {CUT_AT} of {LINES} operator lines: {len(delivered)} delivered, "
            f"{len(bounced() & set(ids))} bounced, {len(silent)} silent (settled {settled_s:.1f} s "
            f"after the last line); gateway alive: {chat.gateway.poll() is None}"
        )
        assert silent == []
        assert chat.gateway.poll() is None


@pytest.mark.slow
async def test_broker_refusing_longer_than_the_retry_delays_logged_lines_never_bounces(
    settings, engine, artifacts
) -> None:
    """The broker refuses the gateway for 8 s, four times HABLA_GATEWAY_LINE_RETRY_S:
    every line written meanwhile is logged once, its operator told once it is delayed,
    then receipted; no error reaches the operator."""
    async with one_chat(settings, engine, artifacts, retry_s=2) as chat:
        operator = chat.operator
        limit = ["set_vhost_limits", "-p", chat.vhost]
        ids = [f"d{n}" for n in range(5)]

        def told() -> list[str]:
            return [r.body for r in operator.received if r.kind == "message" and DELAYED in r.body]

        await asyncio.to_thread(_rabbitmqctl, *limit, '{"max-connections": 0}')
        try:
            await asyncio.to_thread(_rabbitmqctl, "close_all_connections", "-p", chat.vhost, "test: broker refusing")
            for stanza_id in ids:
                operator.say(chat.visitor_jid, stanza_id, stanza_id=stanza_id, receipt=True)
                await asyncio.sleep(0.2)
            await wait_until(lambda: len(told()) == len(ids), 30)
            assert not any(i in operator.receipts for i in ids)  # not confirmed while refused
            await asyncio.sleep(8 - 1 - 2)
        finally:
            await asyncio.to_thread(_rabbitmqctl, *limit, '{"max-connections": -1}')
        await wait_until(lambda: all(i in operator.receipts for i in ids), 60)
        errors = [r.stanza_id for r in operator.received if r.kind == "message" and r.error]
        bodies = [
            e.get("body") for e in await ConversationLog(chat.redis, chat.env.settings).after(chat.conversation_id, 0)
        ]
        print(f"\nbroker refused 8 s: {len(told())} delayed notices, {len(errors)} errors, log {bodies}")
        assert errors == []
        assert sorted(b for b in bodies if b in ids) == ids  # each once
        assert chat.gateway.poll() is None
