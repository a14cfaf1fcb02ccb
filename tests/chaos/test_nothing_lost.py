"""Nothing lost under steady load both ways while every piece fails in turn.

Visitors talk through the real frontend's HTTP API (send with retries of the same
message id, as the widget does; receive by long-poll from their cursor, showing each
seq once, as the widget does); operators are real XMPP clients on Prosody (strict:
no automatic authorisation or subscription) that ask for receipts. Every service is
a real process; Redis is a private redis-server the test may stop and rewind, and
RabbitMQ a private node it may kill.

Faults, each under load: SIGKILL + restart of the frontend, the gateway and the
worker; every AMQP connection closed; RabbitMQ SIGKILLed and restarted (a node of the
test's own); Redis down 10 s; Redis restarted from a snapshot older than the last writes.

Asserts: every line a visitor got 200 for reaches its operator and the archive; every
operator line the gateway receipted reaches the visitor and the archive; nothing shown
twice; every operator line got a receipt, an error, or (the gateway that took it from
the socket was SIGKILLed) a restart notice after it in that visitor's window; no two
archived lines share a (conversation, seq); the gateway is alive at the end. Prints
the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import tornado.httpclient

from libs.common import db
from libs.common.db import site_store
from libs.common.settings import Settings
from tests.chaos.broker import PrivateBroker
from tests.chaos.stack import HEALTH_PORTS, Stack, running_stack
from tests.chat_load import Operator, Visitor, archived, settled, tally, until, vhost
from tests.im_gateway.operator_client import OperatorClient
from tests.redis_server import PrivateRedis
from tools import prosody

SITES = 2
VISITORS_PER_SITE = 5
VISITOR_LINE_EVERY_S = 1.0  # per visitor: 10 lines/s from visitors in all
STEADY_S = 6.0  # load between faults
SETTLE_S = 90.0  # after the load stops, for retries and redeliveries to finish


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_nothing_lost_under_load_while_everything_fails(settings: Settings, artifacts: Path) -> None:
    redis_server = PrivateRedis()
    redis_server.start()
    # A RabbitMQ node of our own, so the test may SIGKILL it (others share the system one).
    broker = PrivateBroker()
    await asyncio.to_thread(broker.start)
    try:
        async with running_stack(
            settings,
            artifacts,
            "chaos",
            redis_url=redis_server.url,
            amqp_url=broker.url,
            amqp_retry_delays_ms="200,1000,3000",
            visitor_messages_per_min=100_000,
            ip_requests_per_min=1_000_000,
            transcript_wait_s=5,
            presence_heartbeat_s=2,
            presence_ttl_s=6,
            gateway_lease_ttl_s=3,
        ) as stack:
            await _chaos(stack, redis_server, broker)
    finally:
        redis_server.close()
        await asyncio.to_thread(broker.remove)


async def _chaos(stack: Stack, redis_server: PrivateRedis, broker: PrivateBroker) -> None:
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
            account = site_store.account_for_email(conn, f"chaos{k}-{uuid.uuid4().hex[:6]}@shop.example")
            site = site_store.create_site(
                conn, account, f"Chaos {k}", allowed_domains=["127.0.0.1"], transcript_emails=["o@shop.example"]
            )
            site_store.add_operator(conn, site.id, jid, f"Agent {k}")
        sites.append(site.id)
        client = OperatorClient(jid, password, "127.0.0.1", s.xmpp_c2s_port)
        # The strictest real client: nothing accepted or subscribed on its own.
        client.xmpp.auto_authorize = False
        client.xmpp.auto_subscribe = False
        operators.append(Operator(client, site.id))

    for name in HEALTH_PORTS:
        stack.start(name)
    for name in HEALTH_PORTS:
        await stack.wait_healthy(name)
    # A clean restart once the services declared their queues: RabbitMQ keeps a new
    # quorum queue's membership in memory for a while, and a node killed within seconds
    # of creating one can come back with it leaderless (see test_broker_restart.py).
    await asyncio.to_thread(broker.stop)
    await asyncio.to_thread(broker.start)
    for name in HEALTH_PORTS:
        await stack.wait_healthy(name)
    for operator in operators:
        await operator.client.start()

    visitors = [
        Visitor(k * VISITORS_PER_SITE + i, sites[k], s.public_url, http)
        for k in range(SITES)
        for i in range(VISITORS_PER_SITE)
    ]
    # Wait until the sites are online (the gateway saw the operators).
    for visitor in visitors:
        await visitor.start()
    stop = asyncio.Event()
    receivers = [asyncio.create_task(v.receive(stop)) for v in visitors]

    senders = [asyncio.create_task(v.load(stop, VISITOR_LINE_EVERY_S)) for v in visitors]
    talkers = [asyncio.create_task(o.talk(stop)) for o in operators]
    gateway_deaths: list[str] = []
    timeline: list[tuple[float, str]] = []
    began = time.monotonic()

    def note(what: str) -> None:
        timeline.append((round(time.monotonic() - began, 1), what))

    async def steady() -> None:
        deadline = time.monotonic() + STEADY_S
        while time.monotonic() < deadline:
            if not stack.alive("im_gateway") and "im_gateway" not in killing:
                gateway_deaths.append(f"{time.monotonic() - began:.1f}s")
                stack.start("im_gateway")  # keep the test going; counted as a failure
            await asyncio.sleep(0.25)

    killing: set[str] = set()

    async def kill_and_restart(name: str) -> None:
        killing.add(name)
        stack.kill(name)
        note(f"SIGKILL {name}")
        await asyncio.sleep(1.0)
        stack.start(name)
        await stack.wait_healthy(name)
        killing.discard(name)
        note(f"{name} healthy again")

    async def close_connections() -> None:
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "-q", "-n", broker.node, "close_all_connections", "-p", vhost(s), "chaos test"],
            env=broker.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        note("AMQP connections closed")

    async def broker_killed() -> None:
        await asyncio.to_thread(broker.kill)
        note("SIGKILL RabbitMQ")
        await asyncio.to_thread(broker.start)
        note("RabbitMQ back")

    async def redis_down() -> None:
        await asyncio.to_thread(redis_server.snapshot)  # comes back with everything
        redis_server.kill()
        note("Redis down")
        await asyncio.sleep(10)
        await asyncio.to_thread(redis_server.start)
        note("Redis back (all data)")

    async def redis_rewound() -> None:
        await asyncio.to_thread(redis_server.snapshot)
        note("Redis snapshot")
        await asyncio.sleep(STEADY_S)  # writes the snapshot will not have
        redis_server.kill()
        await asyncio.to_thread(redis_server.start)
        note("Redis restarted from the older snapshot")

    faults: list[Callable[[], Awaitable[None]]] = [
        lambda: kill_and_restart("rpc_frontend"),
        lambda: kill_and_restart("im_gateway"),
        lambda: kill_and_restart("transcript_worker"),
        close_connections,
        broker_killed,
        redis_down,
        redis_rewound,
    ]
    try:
        await steady()
        for fault in faults:
            await fault()
            await steady()
        note("load stops")
        stop.set()
        with contextlib.suppress(TimeoutError):
            ended = await asyncio.wait_for(asyncio.gather(*senders, return_exceptions=True), 60)
            assert not [e for e in ended if isinstance(e, Exception)], f"a visitor's sender died: {ended}"
        for task in talkers:
            await task

        # Receivers keep polling during the settle time.
        settle_stop = asyncio.Event()
        for task in receivers:
            task.cancel()
        receivers = [asyncio.create_task(v.receive(settle_stop)) for v in visitors]

        def done() -> bool:
            return settled(visitors, operators, excused=Operator.covered)

        await until(done, SETTLE_S)
        note("settled" if done() else "settle time over")
        settle_stop.set()
    finally:
        stop.set()
        for task in [*senders, *talkers, *receivers]:
            task.cancel()
        for operator in operators:
            with contextlib.suppress(Exception):
                await operator.client.stop()

    # --- the counts ----------------------------------------------------------------------
    bodies, shared_seq = archived(engine)
    engine.dispose()
    conflicts = sum(
        path.read_text(errors="replace").count("another line holds their seq")
        for path in stack.log_dir.glob("transcript_worker.*.log")
    )
    count = tally(visitors, operators, bodies)
    # A line the gateway's socket took just before a SIGKILL gets neither a receipt nor
    # an error (the server handed it over, the process died before logging it): the
    # next owner tells the operator to resend such lines, in that visitor's window.
    silent = count.silent
    covered = [b for o in operators for b in silent if b in o.sent and o.covered(b)]
    notices = sum(len(o.notices()) for o in operators)
    report = {
        "timeline": timeline,
        **count.report(visitors),
        "  of which covered by a restart notice received after them": len(covered),
        "restart notices received by operators": notices,
        "archived (conversation, seq) pairs held by two lines": shared_seq,
        "seq conflicts refused by the archive": conflicts,
        "gateway deaths we did not cause": gateway_deaths,
        "services alive at the end": {name: stack.alive(name) for name in HEALTH_PORTS},
    }
    print("\n" + json.dumps(report, indent=1))
    (stack.log_dir / "report.json").write_text(json.dumps(report, indent=1))
    examples = count.examples()
    print(json.dumps(examples))
    (stack.log_dir / "examples.json").write_text(json.dumps(examples, indent=1))
    assert len(count.acked) > 0 and len(count.receipted) > 0, "no load got through"
    assert not count.not_at_operator, examples
    assert not count.twice_at_operator, examples
    assert not count.not_shown, examples
    assert not count.not_archived, examples
    assert not count.shown_twice, examples
    assert shared_seq == 0
    assert stack.alive("im_gateway")
    assert not gateway_deaths
    # Every operator line: receipted, bounced, or covered by a restart notice after it.
    assert not sorted(set(silent) - set(covered)), examples
