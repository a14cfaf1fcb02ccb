"""The broker drops the gateway's connections while an operator writes (issue 14 item 3).

`rabbitmqctl close_all_connections` on the run's vhost: the gateway's publishes of
operator lines (archive + the visitor's frontend, in the background) fail until its
robust connection is back. Each line is retried and then delivered (receipt) or, past
HABLA_GATEWAY_LINE_RETRY_S, bounced with an XMPP error: none is dropped in silence."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import urllib.parse
import uuid

import pytest

from libs.common import state
from libs.common.state.presence import SiteStatusReader
from libs.common.state.sessions import VisitorSessions
from services.im_gateway.visitors import VisitorNames
from tests.im_gateway.conftest import create_site
from tests.im_gateway.isolated import isolated_gateway_env, site_online, wait_until
from tests.im_gateway.operator_client import OperatorClient
from tools import prosody

LINES = 50
EVERY_S = 0.2
CUT_AT = 10  # after this many lines


@pytest.mark.slow
async def test_broker_connections_closed_every_operator_line_delivered_or_bounced(settings, engine, artifacts) -> None:
    async with isolated_gateway_env(
        settings, artifacts, presence_heartbeat_s=1, presence_ttl_s=30, gateway_line_retry_s=20
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
            await sessions.save(
                visitor_id, site_id, {"frontend_id": s.frontend_id, "conversation_id": uuid.uuid4().hex,
                                      "page_url": "https://shop.example/", "page_title": "Home"},
            )  # fmt: skip
            visitor_jid = await VisitorNames(redis, s).jid_of(visitor_id)
            operator.say(visitor_jid, "warm-up", stanza_id="warm-up", receipt=True)
            await wait_until(lambda: "warm-up" in operator.receipts, 20)

            for n in range(LINES):
                operator.say(visitor_jid, f"o{n}", stanza_id=f"o{n}", receipt=True)
                if n == CUT_AT:
                    await asyncio.to_thread(
                        subprocess.run,
                        ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "test: broker outage"],
                        check=True, capture_output=True, timeout=60,
                    )  # fmt: skip
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
                f"after the last line); gateway alive: {gateway.poll() is None}"
            )
            assert silent == []
            assert gateway.poll() is None
        finally:
            env.terminate(gateway)
            await operator.stop()
            await redis.aclose()
