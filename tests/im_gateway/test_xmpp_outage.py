"""The XMPP server goes away and comes back: the gateway reconnects and loses nothing."""

from __future__ import annotations

import asyncio
import collections
import urllib.error
import urllib.request
import uuid

import pytest

from libs.common import state
from libs.common.messaging import Bus
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import SiteStatusReader
from libs.common.state.sessions import VisitorSessions
from tests.im_gateway.conftest import create_site
from tests.im_gateway.isolated import isolated_gateway_env, site_online, visitor_line, wait_until
from tests.im_gateway.operator_client import OperatorClient
from tools import prosody


@pytest.mark.slow
async def test_gateway_reconnects_after_prosody_restart_and_delivers_held_lines(settings, engine, artifacts) -> None:
    async with isolated_gateway_env(settings, artifacts, presence_heartbeat_s=1, presence_ttl_s=3) as env:
        s = env.settings
        redis = state.connect(s)
        bus = await Bus.connect(s, "outage-test")
        await bus.declare_topology()
        user, password = f"op-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:12]
        await asyncio.to_thread(prosody.register, env.prosody, user, password)
        jid = f"{user}@{s.xmpp_domain}"
        site_id = await create_site(engine, [(jid, "Kim")])
        status = SiteStatusReader(redis, s)
        gateway = env.start_gateway("gateway")
        operator = await OperatorClient(jid, password, "127.0.0.1", s.xmpp_c2s_port).start()
        try:
            await wait_until(lambda: site_online(status, site_id), within=20)
            sessions, log = VisitorSessions(redis, s), ConversationLog(redis, s)
            visitor_id, conversation_id = sessions.new_visitor_id(), uuid.uuid4().hex
            await sessions.save(visitor_id, site_id, {"frontend_id": s.frontend_id, "conversation_id": conversation_id})

            async def visitor_says(body: str) -> None:
                await visitor_line(log, bus, site_id, visitor_id, conversation_id, body)

            await visitor_says("before the outage")
            await operator.wait_for(lambda r: r.body == "before the outage", within=30)
            health = f"http://127.0.0.1:{s.gateway_metrics_port}"
            code, body = await _get(f"{health}/healthz")
            assert code == 200 and '"xmpp": "ok"' in body
            code, body = await _get(f"{health}/metrics")
            assert code == 200 and "habla_gateway_stanzas_sent_total" in body and "habla_gateway_lease_held 1.0" in body

            await asyncio.to_thread(env.stop_prosody)
            await visitor_says("during the outage")  # held unacknowledged by the gateway
            await wait_until(lambda: _offline(status, site_id), within=s.presence_ttl_s + 30)
            code, body = await _get(f"{health}/healthz")
            assert code == 503 and "xmpp" in body and "reconnecting" in body
            await asyncio.sleep(1.0)
            await asyncio.to_thread(env.start_prosody)

            operator = await OperatorClient(jid, password, "127.0.0.1", s.xmpp_c2s_port).start()
            await wait_until(lambda: site_online(status, site_id), within=30)
            await operator.wait_for(lambda r: r.body == "during the outage", within=30)
            await visitor_says("after the outage")
            await operator.wait_for(lambda r: r.body == "after the outage", within=30)
            bodies = collections.Counter(r.body for r in operator.received if r.kind == "message" and r.body)
            assert bodies["during the outage"] == 1 and bodies["after the outage"] == 1
            # SIGTERM: a graceful stop, exit status 0, the lease released for a standby.
            assert env.terminate(gateway) == 0
            gateway_log = (env.log_dir / "gateway.log").read_text()
            assert "XMPP stream lost; reconnecting" in gateway_log and "im_gateway stopped" in gateway_log
            assert not await redis.exists(s.redis_key("gw", "lease", s.xmpp_component_domain))
        finally:
            env.terminate(gateway)
            await operator.stop()
            await bus.close()
            await redis.aclose()


async def _get(url: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(fetch)


async def _offline(status: SiteStatusReader, site_id: str) -> bool:
    return not (await status.get(site_id)).online
