"""Fast takeover (issue 11, Loss 4; issue 14 standby /healthz).

Two gateway processes for one component domain: the XMPP server admits one component
connection, so one serves and the other stands by (its /healthz: 503 "standby: …").
The active one is SIGKILLed; the standby, trying the connection every second, takes
over while the dead one's lease still runs: a visitor line sent right after the kill
reaches the operator. The lease's TTL is set far beyond the test's deadlines, so a
standby that waited for it to expire fails the test; the measured gap is printed (not
asserted: benchmarks measure)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
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
from tests.im_gateway.isolated import Isolated, isolated_gateway_env, site_online, visitor_line, wait_until
from tests.im_gateway.operator_client import OperatorClient
from tools import prosody

# What the test waits for before it fails (generous for a loaded machine), and a lease
# TTL far beyond it: a takeover that waited for the TTL never makes the deadline.
DEADLINE_S = 60.0
LEASE_OUTLASTS_TEST_S = 600


def _health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


@pytest.mark.slow
async def test_standby_takes_over_before_the_dead_gateways_lease_expires(settings, engine, artifacts) -> None:
    async with isolated_gateway_env(
        settings, artifacts, presence_heartbeat_s=1, presence_ttl_s=10, gateway_lease_ttl_s=LEASE_OUTLASTS_TEST_S
    ) as env:
        s = env.settings
        other = Isolated(
            dataclasses.replace(s, gateway_metrics_port=prosody.free_port()), env.prosody, env.log_dir,
            env.prosody_process,
        )  # fmt: skip
        redis = state.connect(s)
        bus = await Bus.connect(s, "takeover-test")
        await bus.declare_topology()
        user, password = f"op-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:12]
        await asyncio.to_thread(prosody.register, env.prosody, user, password)
        site_id = await create_site(engine, [(f"{user}@{s.xmpp_domain}", "Kim")])
        first = env.start_gateway("gateway-1")
        await wait_until(lambda: _health(s.gateway_metrics_port)[0] == 200, 30)
        second = other.start_gateway("gateway-2")
        operator = await OperatorClient(f"{user}@{s.xmpp_domain}", password, "127.0.0.1", s.xmpp_c2s_port).start()
        try:
            await wait_until(lambda: site_online(SiteStatusReader(redis, s), site_id), 30)
            await wait_until(lambda: _health(other.settings.gateway_metrics_port)[0] == 503, 30)
            code, report = _health(other.settings.gateway_metrics_port)
            assert code == 503 and "standby: " in json.dumps(report)
            assert _health(s.gateway_metrics_port)[0] == 200

            sessions, log = VisitorSessions(redis, s), ConversationLog(redis, s)
            visitor_id, conversation_id = sessions.new_visitor_id(), uuid.uuid4().hex
            await sessions.save(
                visitor_id, site_id, {"frontend_id": s.frontend_id, "conversation_id": conversation_id,
                                      "page_url": "https://shop.example/", "page_title": "Home"},
            )  # fmt: skip

            async def visitor_says(body: str) -> None:
                await visitor_line(log, bus, site_id, visitor_id, conversation_id, body)

            await visitor_says("before")
            await operator.wait_for(lambda r: r.body == "before", within=20)

            env.kill(first)
            killed = time.monotonic()
            await visitor_says("after")
            # The dead gateway's lease has minutes to run: only a takeover before its expiry
            # (the holder stopped renewing: DomainLease.vacant) gets the line through.
            await operator.wait_for(lambda r: r.body == "after", within=DEADLINE_S)
            line_after = time.monotonic() - killed
            await wait_until(lambda: _health(other.settings.gateway_metrics_port)[0] == 200, DEADLINE_S)
            healthy_after = time.monotonic() - killed
            print(
                f"\ntakeover: the visitor line sent at the SIGKILL reached the operator after {line_after:.2f} s; "
                f"the standby's /healthz said 200 after {healthy_after:.2f} s (lease TTL {s.gateway_lease_ttl_s} s)"
            )
        finally:
            for process in (first, second):
                env.terminate(process)
            await operator.stop()
            await bus.close()
            await redis.aclose()
