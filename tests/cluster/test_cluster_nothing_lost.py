"""The whole of Habla on a 3-node RabbitMQ cluster and Redis with Sentinel: nothing lost
under steady load both ways while broker nodes and Redis masters fail.

The load and the checks are the chaos test's (tests/chaos/test_nothing_lost.py: visitors
over the real frontend's HTTP API resending with the same message id, strict operators
on Prosody asking for receipts); every service is a real process pointed at all three
broker nodes (HABLA_AMQP_URL, HABLA_AMQP_QUORUM) and at the Sentinels
(HABLA_REDIS_SENTINELS, HABLA_REDIS_WAIT_MS).

Faults, each under load: broker node 1 leaves (``stop_app``) and comes back; broker
node 2 is SIGKILLed and restarted; the Redis master is SIGKILLed (Sentinel promotes the
replica; the dead one is restarted empty and becomes the replica); a planned
``SENTINEL FAILOVER``.

Asserts: every visitor line acknowledged with 200 reaches its operator and MySQL; every
operator line the gateway receipted reaches the visitor and MySQL; nothing shown twice;
no (conversation, seq) held by two archived lines; every service alive at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import tornado.httpclient

from libs.common import db
from libs.common.db import site_store
from libs.common.settings import Settings
from tests.chaos.stack import HEALTH_PORTS, Stack, running_stack
from tests.chat_load import Operator, Visitor, archived, settled, tally, until, vhost
from tests.im_gateway.operator_client import OperatorClient
from tools import prosody
from tools.rabbit_cluster import Cluster
from tools.sentinel import SentinelSet

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    # redis-py drops a connection to a killed server without closing its StreamWriter.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

SITES = 2
VISITORS_PER_SITE = 4
VISITOR_LINE_EVERY_S = 1.0
STEADY_S = 6.0
SETTLE_S = 90.0


async def test_nothing_lost_while_broker_nodes_and_redis_masters_fail(
    settings: Settings, artifacts: Path, rabbit: Cluster, sentinels: SentinelSet
) -> None:
    async with running_stack(
        settings,
        artifacts,
        "cluster",
        amqp_retry_delays_ms="200,1000,3000",
        amqp_quorum=True,
        redis_sentinels=sentinels.addresses,
        redis_master_name=sentinels.master_name,
        redis_wait_ms=1000,
        visitor_messages_per_min=100_000,
        ip_requests_per_min=1_000_000,
        transcript_wait_s=5,
        presence_heartbeat_s=2,
        presence_ttl_s=6,
    ) as stack:
        name = vhost(stack.settings)
        await asyncio.to_thread(rabbit.add_vhost, name)
        stack.settings = dataclasses.replace(stack.settings, amqp_url=",".join(rabbit.urls(name)))
        await _run(stack, rabbit, sentinels)


async def _run(stack: Stack, rabbit: Cluster, sentinels: SentinelSet) -> None:
    s = stack.settings
    engine = db.engine(s)
    tornado.httpclient.AsyncHTTPClient.configure(None, max_clients=100)
    http = tornado.httpclient.AsyncHTTPClient()
    operators: list[Operator] = []
    sites: list[str] = []
    for k in range(SITES):
        user, password = f"op{k}-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:12]
        await asyncio.to_thread(prosody.register, stack.prosody, user, password)
        jid = f"{user}@{s.xmpp_domain}"
        with engine.begin() as conn:
            account = site_store.account_for_email(conn, f"cluster{k}-{uuid.uuid4().hex[:6]}@shop.example")
            site = site_store.create_site(
                conn, account, f"Cluster {k}", allowed_domains=["127.0.0.1"], transcript_emails=["o@shop.example"]
            )
            site_store.add_operator(conn, site.id, jid, f"Agent {k}")
        sites.append(site.id)
        client = OperatorClient(jid, password, "127.0.0.1", s.xmpp_c2s_port)
        client.xmpp.auto_authorize = False
        client.xmpp.auto_subscribe = False
        operators.append(Operator(client, site.id))

    for name in HEALTH_PORTS:
        stack.start(name)
    for name in HEALTH_PORTS:
        await stack.wait_healthy(name)
    for operator in operators:
        await operator.client.start()
    visitors = [
        Visitor(k * VISITORS_PER_SITE + i, sites[k], s.public_url, http)
        for k in range(SITES)
        for i in range(VISITORS_PER_SITE)
    ]
    for visitor in visitors:
        await visitor.start()
    stop = asyncio.Event()
    receivers = [asyncio.create_task(v.receive(stop)) for v in visitors]

    senders = [asyncio.create_task(v.load(stop, VISITOR_LINE_EVERY_S)) for v in visitors]
    talkers = [asyncio.create_task(o.talk(stop)) for o in operators]
    timeline: list[tuple[float, str]] = []
    began = time.monotonic()

    def note(what: str) -> None:
        timeline.append((round(time.monotonic() - began, 1), what))

    async def steady() -> None:
        await asyncio.sleep(STEADY_S)

    async def broker_node_leaves() -> None:
        node = rabbit.nodes[0]
        await asyncio.to_thread(rabbit.stop_app, node)
        note(f"stop_app {node.name}")
        await steady()
        await asyncio.to_thread(rabbit.start_app, node)
        note(f"start_app {node.name}")

    async def broker_node_dies() -> None:
        node = rabbit.nodes[1]
        await asyncio.to_thread(rabbit.kill, node)
        note(f"SIGKILL {node.name}")
        await steady()
        await asyncio.to_thread(rabbit.start_node, node)
        await asyncio.to_thread(rabbit.await_node, node)
        note(f"{node.name} restarted")

    async def redis_master_dies() -> None:
        master = sentinels.master()
        master.kill()
        note(f"SIGKILL Redis master :{master.port}")
        new = await asyncio.to_thread(sentinels.wait_for_new_master, master.port)
        note(f"Sentinel promoted :{new}")
        await asyncio.to_thread(master.start)
        note(f"old master :{master.port} restarted empty")

    async def planned_failover() -> None:
        # As an operator would: only once the replica is in sync (a forced failover
        # to a replica still loading, or to the restarted server before Sentinel has
        # made it a replica, promotes an empty Redis).
        old = sentinels.master_port()
        replica = next(server for server in sentinels.data if server.port != old)
        await asyncio.to_thread(sentinels.wait_replica_in_sync, replica.port, 60)
        note(f"replica :{replica.port} in sync")
        await asyncio.to_thread(sentinels.failover)
        new = await asyncio.to_thread(sentinels.wait_for_new_master, old)
        note(f"SENTINEL FAILOVER :{old} -> :{new}")

    faults: list[Callable[[], Awaitable[None]]] = [
        broker_node_leaves,
        broker_node_dies,
        redis_master_dies,
        planned_failover,
    ]
    try:
        await steady()
        for fault in faults:
            await fault()
            await steady()
        note("load stops")
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*senders, return_exceptions=True), 60)
        for task in talkers:
            await task

        settle_stop = asyncio.Event()
        for task in receivers:
            task.cancel()
        receivers = [asyncio.create_task(v.receive(settle_stop)) for v in visitors]
        await until(lambda: settled(visitors, operators), SETTLE_S)
        note("settled" if settled(visitors, operators) else "settle time over")
        settle_stop.set()
    finally:
        stop.set()
        for task in [*senders, *talkers, *receivers]:
            task.cancel()
        for operator in operators:
            with contextlib.suppress(Exception):
                await operator.client.stop()

    bodies, shared_seq = archived(engine)
    engine.dispose()
    gc.collect()  # the dropped connections' writers, while the filters above apply
    count = tally(visitors, operators, bodies)
    report = {
        "timeline": timeline,
        **count.report(visitors),
        "archived (conversation, seq) pairs held by two lines": shared_seq,
        "services alive at the end": {name: stack.alive(name) for name in HEALTH_PORTS},
    }
    print("\n" + json.dumps(report, indent=1))
    (stack.log_dir / "report.json").write_text(json.dumps(report, indent=1))
    examples = count.examples()
    assert len(count.acked) > 0 and len(count.receipted) > 0, "no load got through"
    assert not count.not_at_operator, examples
    assert not count.twice_at_operator, examples
    assert not count.not_shown, examples
    assert not count.not_archived, examples
    assert shared_seq == 0
    assert all(stack.alive(name) for name in HEALTH_PORTS)
    # A failover discards the writes the old master took after its replica was
    # promoted: never acknowledged (WAIT failed), but a poll may have read one, and its
    # retry lands on the new master under a new seq with the same message id. The
    # widget, and this test's visitors, show a message id once.
    assert not count.shown_twice, examples
