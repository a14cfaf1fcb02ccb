"""Two gateways for two component domains on one RabbitMQ vhost (issue 10, item 5).

Each domain has its own queues (im_gateway.<domain>.visitor / .conversation), bound per
site to the sites that domain serves (sites.xmpp_domain): each operator gets exactly
their own sites' lines, and a site moved to a domain is picked up on the notice."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
import uuid

import pytest
import sqlalchemy as sa

from libs.common import codec, state, topology
from libs.common.db import site_store
from libs.common.messaging import Bus
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import SiteStatusReader
from libs.common.state.sessions import VisitorSessions
from tests.im_gateway.conftest import create_site
from tests.im_gateway.isolated import Isolated, isolated_gateway_env, site_online, wait_until
from tests.im_gateway.operator_client import OperatorClient
from tools import prosody, sandbox

LINES = 20


class Chat:
    """A visitor of one site, talking the way the frontend publishes."""

    def __init__(self, settings: Settings, redis, bus: Bus, site_id: str) -> None:
        self.settings, self.redis, self.bus, self.site_id = settings, redis, bus, site_id
        self.visitor_id = VisitorSessions(redis, settings).new_visitor_id()
        self.conversation_id = uuid.uuid4().hex

    async def open(self) -> None:
        await VisitorSessions(self.redis, self.settings).save(
            self.visitor_id, self.site_id,
            {"frontend_id": self.settings.frontend_id, "conversation_id": self.conversation_id,
             "page_url": "https://shop.example/", "page_title": "Home"},
        )  # fmt: skip

    async def say(self, body: str) -> None:
        message_id = uuid.uuid4().hex
        appended = await ConversationLog(self.redis, self.settings).append(
            self.conversation_id, message_id,
            {"kind": "message", "sender": "visitor", "body": body, "sent_at_ms": 0, "operator_name": None},
        )  # fmt: skip
        await self.bus.publish(
            topology.VISITOR, f"{self.site_id}.message",
            codec.ChatMessage(
                message_id=message_id, conversation_id=self.conversation_id, site_id=self.site_id,
                visitor_id=self.visitor_id, sender=codec.SenderKind.VISITOR, body=body,
                sent_at_ms=int(time.time() * 1000), seq=appended.seq,
            ),
        )  # fmt: skip


async def _operator(cfg: prosody.ProsodyConfig, settings: Settings, name: str) -> tuple[str, str]:
    user, password = f"{name}-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:12]
    await asyncio.to_thread(prosody.register, cfg, user, password)
    return f"{user}@{settings.xmpp_domain}", password


@pytest.mark.slow
async def test_two_domains_share_a_vhost_and_each_operator_gets_only_their_sites(settings, engine, artifacts) -> None:
    async with isolated_gateway_env(settings, artifacts, presence_heartbeat_s=1, presence_ttl_s=3) as env_a:
        a = env_a.settings
        # Domain B: its own XMPP server and component domain; same vhost, Redis, MySQL.
        b_domain = f"chat-b{uuid.uuid4().hex[:4]}.localhost"
        b = dataclasses.replace(
            a, xmpp_component_domain=b_domain, xmpp_default_component_domain=a.xmpp_component_domain,
            gateway_metrics_port=prosody.free_port(),
        )  # fmt: skip
        cfg_b = sandbox.prosody_config(b)
        env_b = Isolated(sandbox.with_prosody_ports(b, cfg_b), cfg_b, env_a.log_dir, prosody.start(cfg_b))
        b = env_b.settings
        redis = state.connect(a)
        bus = await Bus.connect(a, "two-domains-test")
        await bus.declare_topology()
        jid_a, pw_a = await _operator(env_a.prosody, a, "opa")
        jid_b, pw_b = await _operator(cfg_b, b, "opb")
        site_a = await create_site(engine, [(jid_a, "Ann")])
        site_b = await create_site(engine, [(jid_b, "Bob")])
        await asyncio.to_thread(_move, engine, site_b, b_domain)
        gateways = [env_a.start_gateway("gateway-a"), env_b.start_gateway("gateway-b")]
        op_a = await OperatorClient(jid_a, pw_a, "127.0.0.1", a.xmpp_c2s_port).start()
        op_b = await OperatorClient(jid_b, pw_b, "127.0.0.1", b.xmpp_c2s_port).start()
        status = SiteStatusReader(redis, a)
        try:
            await wait_until(lambda: site_online(status, site_a), within=30)
            await wait_until(lambda: site_online(status, site_b), within=30)
            chat_a, chat_b = Chat(a, redis, bus, site_a), Chat(a, redis, bus, site_b)
            await chat_a.open()
            await chat_b.open()
            for n in range(LINES):
                await chat_a.say(f"for A {n}")
                await chat_b.say(f"for B {n}")
            await wait_until(lambda: len(_lines(op_a, "for ")) >= LINES and len(_lines(op_b, "for ")) >= LINES, 30)

            # A site created later and moved to B: the notice binds it at once.
            site_c = await create_site(engine, [(jid_b, "Bob")])
            await asyncio.to_thread(_move, engine, site_c, b_domain)
            await SiteDirectory(redis, engine, a).invalidate(site_c)
            await wait_until(lambda: site_online(status, site_c), within=30)
            chat_c = Chat(a, redis, bus, site_c)
            await chat_c.open()
            for n in range(5):
                await chat_c.say(f"for C {n}")
            await wait_until(lambda: len(_lines(op_b, "for C ")) >= 5, 30)
            await asyncio.sleep(1.0)  # a stray line would arrive by now

            assert sorted(_lines(op_a, "for ")) == sorted(f"for A {n}" for n in range(LINES))
            assert sorted(_lines(op_b, "for ")) == sorted(
                [f"for B {n}" for n in range(LINES)] + [f"for C {n}" for n in range(5)]
            )
            assert all(r.sender.endswith("@" + a.xmpp_component_domain) for r in op_a.received if r.body)
            assert all(r.sender.endswith("@" + b_domain) for r in op_b.received if r.body)
        finally:
            for process in gateways:
                env_a.terminate(process)
            await op_a.stop()
            await op_b.stop()
            await bus.close()
            await redis.aclose()
            env_b.stop_prosody()
            shutil.rmtree(cfg_b.dir, ignore_errors=True)


def _move(engine: sa.Engine, site_id: str, domain: str) -> None:
    with engine.begin() as conn:
        site_store.set_xmpp_domain(conn, site_id, domain)


def _lines(operator: OperatorClient, prefix: str) -> list[str]:
    return [r.body for r in operator.received if r.kind == "message" and r.body.startswith(prefix)]
