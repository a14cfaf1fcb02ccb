"""Redis down for ~10 s while an operator writes (issue 14 items 2-3, issue 11 Loss 3).

The test runs a Redis of its own (own port, own folder), stops it with SHUTDOWN SAVE
(connections refused, as in a restart) and starts it again from its snapshot 10 s
later. The gateway rides the outage out (the lease is not lost to a connection
error), and every operator line is either delivered (receipt) or bounced with an
XMPP error the client shows: none is dropped in silence."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
import uuid

import pytest

from libs.common import state
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import SiteStatusReader
from libs.common.state.sessions import VisitorSessions
from tests.im_gateway.conftest import create_site
from tests.im_gateway.isolated import isolated_gateway_env, site_online, wait_until
from tests.im_gateway.operator_client import OperatorClient
from tests.redis_server import PrivateRedis
from tools import prosody

LINES = 80
EVERY_S = 0.2  # 16 s of lines: before, during and after the outage
DOWN_AT_S = 3.0
DOWN_FOR_S = 10.0


@pytest.mark.slow
async def test_redis_down_10_s_every_operator_line_delivered_or_bounced(settings, engine, artifacts) -> None:
    own = PrivateRedis()
    own.start()
    try:
        async with isolated_gateway_env(
            settings, artifacts, redis_url=own.url, presence_heartbeat_s=1, presence_ttl_s=30,
            gateway_lease_ttl_s=3, gateway_line_retry_s=4,
        ) as env:  # fmt: skip
            await _run(env, own, engine)
    finally:
        own.close()


async def _run(env, own: PrivateRedis, engine) -> None:
    s = env.settings
    redis = state.connect(s)
    user, password = f"op-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:12]
    await asyncio.to_thread(prosody.register, env.prosody, user, password)
    site_id = await create_site(engine, [(f"{user}@{s.xmpp_domain}", "Kim")])
    gateway = env.start_gateway("gateway")
    operator = await OperatorClient(f"{user}@{s.xmpp_domain}", password, "127.0.0.1", s.xmpp_c2s_port).start()
    try:
        await wait_until(lambda: site_online(SiteStatusReader(redis, s), site_id), within=30)
        sessions = VisitorSessions(redis, s)
        visitor_id, conversation_id = sessions.new_visitor_id(), uuid.uuid4().hex
        await sessions.save(
            visitor_id, site_id, {"frontend_id": s.frontend_id, "conversation_id": conversation_id,
                                  "page_url": "https://shop.example/", "page_title": "Home"},
        )  # fmt: skip
        visitor_jid = await _visitor_jid(redis, s, visitor_id)
        operator.say(visitor_jid, "warm-up", stanza_id="warm-up", receipt=True)
        await wait_until(lambda: "warm-up" in operator.receipts, 20)

        started = time.monotonic()
        stopped = restarted = False
        for n in range(LINES):
            operator.say(visitor_jid, f"o{n}", stanza_id=f"o{n}", receipt=True)
            await asyncio.sleep(EVERY_S)
            elapsed = time.monotonic() - started
            if not stopped and elapsed >= DOWN_AT_S:
                await asyncio.to_thread(own.stop)
                stopped = True
            if stopped and not restarted and elapsed >= DOWN_AT_S + DOWN_FOR_S:
                await asyncio.to_thread(own.start)
                restarted = True
        if not restarted:
            await asyncio.to_thread(own.start)

        ids = [f"o{n}" for n in range(LINES)]

        def bounced() -> set[str]:
            return {r.stanza_id for r in operator.received if r.kind == "message" and r.error}

        with contextlib.suppress(TimeoutError):  # what is still missing is counted below
            await wait_until(lambda: all(i in operator.receipts or i in bounced() for i in ids), 60)
        delivered = [i for i in ids if i in operator.receipts]
        silent = [i for i in ids if i not in operator.receipts and i not in bounced()]
        logged = {
            e["body"] for e in await ConversationLog(redis, s).after(conversation_id, 0, limit=1000)
            if e.get("sender") == "operator"
        }  # fmt: skip
        print(
            f"\nRedis down {DOWN_FOR_S:.0f} s; {LINES} operator lines: {len(delivered)} delivered (receipt), "
            f"{len(bounced() & set(ids))} bounced with an error, {len(silent)} silent; gateway alive: "
            f"{gateway.poll() is None}"
        )
        assert silent == [], (silent, sorted(logged))
        # Each bounce is counted where an operator of the service would look.
        metrics = await asyncio.to_thread(_metrics, s.gateway_metrics_port)
        assert f"habla_gateway_operator_lines_bounced_total {float(len(bounced() & set(ids)))}".encode() in metrics
        assert gateway.poll() is None, "the gateway stopped during the Redis outage"
        assert set(delivered) <= logged  # a receipt means the line is in the conversation log
        assert delivered and delivered[-1] == ids[-1]  # lines flow again after the outage
    finally:
        env.terminate(gateway)
        await operator.stop()
        await redis.aclose()


async def _visitor_jid(redis, settings, visitor_id: str) -> str:
    from services.im_gateway.visitors import VisitorNames

    return await VisitorNames(redis, settings).jid_of(visitor_id)


def _metrics(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
        return bytes(answer.read())
