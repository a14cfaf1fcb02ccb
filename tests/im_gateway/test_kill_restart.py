"""Chaos: SIGKILL the gateway process mid-conversation, restart it; nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid

import pytest

from libs.common.messaging import Bus
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import SiteStatusReader
from libs.common.state.sessions import VisitorSessions
from services.im_gateway import voice
from services.im_gateway.takeover_notice import LEAD
from tests.im_gateway.conftest import create_site
from tests.im_gateway.isolated import isolated_gateway_env, shown_once, site_online, visitor_line, wait_until
from tests.im_gateway.operator_client import OperatorClient
from tools import prosody

RESTART_NOTICE = voice.PREFIX + LEAD
VISITOR_LINES = 300
OPERATOR_LINES = 60


@pytest.mark.slow
async def test_sigkill_mid_conversation_delivers_everything_exactly_once(settings, engine, artifacts) -> None:
    async with isolated_gateway_env(
        settings, artifacts, presence_heartbeat_s=1, presence_ttl_s=3, gateway_lease_ttl_s=2
    ) as env:
        s = env.settings
        redis = __import__("libs.common.state", fromlist=["connect"]).connect(s)
        bus = await Bus.connect(s, "kill-test")
        await bus.declare_topology()
        user, password = f"op-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:12]
        await asyncio.to_thread(prosody.register, env.prosody, user, password)
        site_id = await create_site(engine, [(f"{user}@{s.xmpp_domain}", "Kim")])
        status = SiteStatusReader(redis, s)
        gateway = env.start_gateway("gateway-1")
        restarted = None
        # The operator logs in only after the gateway invited them (as in `make run`):
        # the pending subscription must survive the gateway's start-up probe.
        await asyncio.sleep(2)
        operator = await OperatorClient(f"{user}@{s.xmpp_domain}", password, "127.0.0.1", s.xmpp_c2s_port).start()
        try:
            await wait_until(lambda: site_online(status, site_id), within=20)

            # A visitor with an open conversation, as the frontend makes them.
            sessions = VisitorSessions(redis, s)
            log = ConversationLog(redis, s)
            visitor_id = sessions.new_visitor_id()
            conversation_id = uuid.uuid4().hex
            await sessions.save(
                visitor_id, site_id, {"frontend_id": s.frontend_id, "conversation_id": conversation_id,
                                      "page_url": "https://shop.example/", "page_title": "Home"},
            )  # fmt: skip

            async def visitor_says(n: int) -> None:
                await visitor_line(log, bus, site_id, visitor_id, conversation_id, f"v{n}")

            await visitor_says(0)
            first = await operator.wait_for(lambda r: r.body == "v0", within=20)
            visitor_jid = first.sender.split("/")[0]

            async def visitor_stream() -> None:
                for n in range(1, VISITOR_LINES):
                    await visitor_says(n)
                    await asyncio.sleep(0.003)

            async def operator_stream() -> None:
                for n in range(OPERATOR_LINES):
                    operator.say(visitor_jid, f"o{n}", stanza_id=f"o{n}", receipt=True)
                    await asyncio.sleep(0.05)

            visitor_task = asyncio.create_task(visitor_stream())
            operator_task = asyncio.create_task(operator_stream())
            # Mid-conversation: lines flowing both ways.
            await wait_until(lambda: len(operator.messages_from(visitor_jid)) >= 60 and len(operator.receipts) >= 5)
            env.kill(gateway)
            killed_at = time.monotonic()

            # Nobody vouches for the operator any more: the site goes offline by itself.
            await wait_until(lambda: _offline(status, site_id), within=s.presence_ttl_s + 10)
            offline_after = time.monotonic() - killed_at

            restarted = env.start_gateway("gateway-2")
            await visitor_task
            await operator_task
            await wait_until(lambda: site_online(status, site_id), within=30)
            # Every visitor line reaches the operator...
            await wait_until(lambda: len({r.body for r in operator.messages_from(visitor_jid)}) >= VISITOR_LINES, 60)
            # ...and the operator's client resends every line the gateway did not receipt
            # (bounced while it was down, or in flight when it died), with the same id.
            for _attempt in range(5):
                missing = [n for n in range(OPERATOR_LINES) if f"o{n}" not in operator.receipts]
                if not missing:
                    break
                for n in missing:
                    operator.say(visitor_jid, f"o{n}", stanza_id=f"o{n}", receipt=True)
                await asyncio.sleep(1.0)
            assert not [n for n in range(OPERATOR_LINES) if f"o{n}" not in operator.receipts]

            await asyncio.sleep(1.0)  # any late duplicate would arrive now
            # Lines written but not yet confirmed by the server when the gateway died
            # are sent again under the same id: a client shows each id once.
            bodies, copies = shown_once(operator.messages_from(visitor_jid))
            seen = collections.Counter(bodies)
            assert {f"v{n}" for n in range(VISITOR_LINES)} <= set(seen)
            assert [body for body, count in seen.items() if count > 1] == []
            lines = [e["body"] for e in await log.after(conversation_id, 0, limit=1000) if e["sender"] == "operator"]
            assert sorted(lines) == sorted(f"o{n}" for n in range(OPERATOR_LINES))
            # The new gateway took over from one that died: the operator is told once, in
            # the visitor's window, to resend lines without a receipt (issue 11).
            notices = [r.body for r in operator.messages_from(visitor_jid) if r.body.startswith(RESTART_NOTICE)]
            assert len(notices) == 1, notices
            print(
                f"\nkilled after {len(seen)} distinct visitor lines in flight; site offline {offline_after:.1f} s "
                f"after the kill; {VISITOR_LINES} visitor and {OPERATOR_LINES} operator lines each exactly once "
                f"({copies} unconfirmed visitor lines sent again under their id)"
            )
        finally:
            for process in (gateway, restarted):
                if process is not None:
                    env.terminate(process)
            await operator.stop()
            await bus.close()
            await redis.aclose()


async def _offline(status: SiteStatusReader, site_id: str) -> bool:
    return not (await status.get(site_id)).online
