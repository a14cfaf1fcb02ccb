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
import collections
import contextlib
import dataclasses
import itertools
import json
import random
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import tornado.httpclient

from libs.common import db
from libs.common.db import messages, site_store
from libs.common.settings import Settings
from services.im_gateway import voice
from services.im_gateway.takeover_notice import LEAD
from tests.chaos.broker import PrivateBroker
from tests.chaos.stack import HEALTH_PORTS, Stack, running_stack
from tests.im_gateway.operator_client import OperatorClient
from tests.redis_server import PrivateRedis
from tools import prosody

SITES = 2
VISITORS_PER_SITE = 5
VISITOR_LINE_EVERY_S = 1.0  # per visitor: 10 lines/s from visitors in all
OPERATOR_LINE_EVERY_S = 0.2  # per operator: 10 lines/s from operators in all
RESTART_NOTICE = voice.PREFIX + LEAD
STEADY_S = 6.0  # load between faults
SETTLE_S = 90.0  # after the load stops, for retries and redeliveries to finish


@dataclasses.dataclass
class VisitorLine:
    message_id: str
    body: str
    acked: bool = False
    answers: list[int] = dataclasses.field(default_factory=list)  # HTTP codes, 0 = no answer


class Visitor:
    """What the widget does, over HTTP: send with retries, long-poll from a cursor."""

    def __init__(self, index: int, site_id: str, base: str, client: tornado.httpclient.AsyncHTTPClient) -> None:
        self.index, self.site_id = index, site_id
        self.api = f"{base}/api/sites/{site_id}"
        self.client = client
        self.token = ""
        self.conversation_id = ""
        self.after = 0
        self.lines: list[VisitorLine] = []
        self.shown: collections.Counter[str] = collections.Counter()  # body -> times shown
        self.seen_ids: set[str] = set()
        self.offered_again = 0  # entries whose message id was already shown
        self.poll_errors: collections.Counter[int] = collections.Counter()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        try:
            response = await self.client.fetch(
                self.api + path,
                method=method,
                body=json.dumps(body) if body is not None else None,
                headers={"Origin": "http://127.0.0.1"},
                raise_error=False,
                request_timeout=40,
            )
        except (OSError, tornado.httpclient.HTTPClientError):
            # Refused, reset or cut mid-answer (a frontend SIGKILLed): no answer.
            return 0, {}
        try:
            return response.code, json.loads(response.body or b"{}")
        except ValueError:
            return response.code, {}

    async def start(self) -> None:
        for _ in range(100):
            code, data = await self.call(
                "POST", "/session", {"token": "", "page": {"url": "http://127.0.0.1/shop", "title": "Shop"}}
            )
            if code == 200:
                self.token = data["token"]
                return
            await asyncio.sleep(0.5)
        raise AssertionError("no session")

    async def send(self, n: int) -> None:
        line = VisitorLine(uuid.uuid4().hex, f"v{self.index}-{n}")
        self.lines.append(line)
        delay = 0.5
        while True:
            code, _ = await self.call(
                "POST", "/messages", {"token": self.token, "message_id": line.message_id, "body": line.body}
            )
            line.answers.append(code)
            if code == 200:
                line.acked = True
                return
            if code == 401:  # session lost with Redis data: a new visit, same line id
                await self.start()
            # 503 (+ Retry-After), a dead frontend (0) or anything else: back off, same id.
            await asyncio.sleep(delay + random.random() * 0.2)
            delay = min(delay * 2, 4.0)

    async def receive(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            code, data = await self.call(
                "GET", f"/poll?token={self.token}&conversation_id={self.conversation_id}&after={self.after}"
            )
            if code != 200:
                self.poll_errors[code] += 1
                await asyncio.sleep(0.5)
                continue
            for event in data.get("events", []):
                if event.get("type") != "entries":
                    continue
                if event.get("conversation_id") != self.conversation_id:
                    self.conversation_id, self.after = event.get("conversation_id") or "", 0
                for entry in event.get("entries", []):
                    if entry.get("seq", 0) <= self.after:
                        continue  # the widget never shows a seq twice
                    self.after = entry["seq"]
                    # As the widget does: a line put back under a new seq after Redis
                    # lost data has the same message id, and is shown once.
                    message_id = entry.get("message_id", "")
                    if message_id in self.seen_ids:
                        self.offered_again += 1
                        continue
                    self.seen_ids.add(message_id)
                    if entry.get("kind") == "message":
                        self.shown[entry.get("body", "")] += 1
            if data.get("conversation_id") != self.conversation_id:
                self.conversation_id, self.after = data.get("conversation_id") or "", int(data.get("after") or 0)
            else:
                self.after = max(self.after, int(data.get("after") or 0))


class Operator:
    """A real XMPP client answering its site's visitors, asking for receipts."""

    def __init__(self, client: OperatorClient) -> None:
        self.client = client
        self.visitor_jids: dict[int, str] = {}  # visitor index -> bare JID
        self.sent: dict[str, int] = {}  # stanza id (= body) -> visitor index
        self.sent_at: dict[str, float] = {}  # stanza id -> time.monotonic() when sent
        self.counter = itertools.count()

    def learn(self) -> None:
        for item in self.client.received:
            if item.kind == "message" and item.body.startswith("v") and "-" in item.body:
                index = int(item.body[1:].split("-")[0])
                self.visitor_jids.setdefault(index, item.sender.split("/")[0])

    async def talk(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.learn()
            for index, jid in list(self.visitor_jids.items()):
                if stop.is_set():
                    break
                body = f"o{index}-{next(self.counter)}"
                self.sent[body] = index
                self.sent_at[body] = time.monotonic()
                self.client.say(jid, body, stanza_id=body, receipt=True)
                await asyncio.sleep(OPERATOR_LINE_EVERY_S)
            await asyncio.sleep(0.05)

    def notices(self) -> list[tuple[str, float]]:
        """(visitor bare JID, when received) of every restart notice: a gateway took over
        from one that died and asked to resend unreceipted lines (issue 11)."""
        return [
            (r.sender.split("/")[0], r.at)
            for r in self.client.received
            if r.kind == "message" and not r.error and r.body.startswith(RESTART_NOTICE)
        ]

    def covered(self, body: str) -> bool:
        """Whether a restart notice reached this operator, in that visitor's window, after
        ``body`` was sent: the operator was told to resend it if it shows no receipt."""
        jid = self.visitor_jids.get(self.sent[body])
        return any(sender == jid and at > self.sent_at[body] for sender, at in self.notices())

    def errors(self) -> set[str]:
        return {r.stanza_id for r in self.client.received if r.kind == "message" and r.error}

    def bodies(self) -> collections.Counter[str]:
        """Times each line is shown. Like a client, a message repeated under the same
        stanza id (a gateway that died between sending it and marking it sent sends it
        again, on purpose) is shown once."""
        shown = {(r.body, r.stanza_id) for r in self.client.received if r.kind == "message" and not r.error}
        return collections.Counter(body for body, _ in shown)


def _vhost(settings: Settings) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(settings.amqp_url).path.lstrip("/")) or "/"


async def _until(predicate: Callable[[], bool], within: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)
    return True


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
        operators.append(Operator(client))

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

    async def visitor_load(visitor: Visitor) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            await visitor.send(n)
            await asyncio.sleep(VISITOR_LINE_EVERY_S)

    senders = [asyncio.create_task(visitor_load(v)) for v in visitors]
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
            ["rabbitmqctl", "-q", "-n", broker.node, "close_all_connections", "-p", _vhost(s), "chaos test"],
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

        def settled() -> bool:
            for visitor in visitors:
                operator = operators[visitor.index // VISITORS_PER_SITE]
                if any(line.acked and line.body not in operator.bodies() for line in visitor.lines):
                    return False
            for operator in operators:
                for body, index in operator.sent.items():
                    if body in operator.client.receipts and not visitors[index].shown[body]:
                        return False
            return True

        # Receivers keep polling during the settle time.
        settle_stop = asyncio.Event()
        for task in receivers:
            task.cancel()
        receivers = [asyncio.create_task(v.receive(settle_stop)) for v in visitors]
        await _until(settled, SETTLE_S)
        note("settled" if settled() else "settle time over")
        settle_stop.set()
    finally:
        stop.set()
        for task in [*senders, *talkers, *receivers]:
            task.cancel()
        for operator in operators:
            with contextlib.suppress(Exception):
                await operator.client.stop()

    # --- the counts ----------------------------------------------------------------------
    archived: set[str] = set()
    with engine.connect() as conn:
        archived = {r.body for r in conn.execute(sa.select(messages.c.body))}
        shared_seq = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM (SELECT conversation_id, seq FROM messages WHERE seq > 0"
                " GROUP BY conversation_id, seq HAVING COUNT(*) > 1) d"
            )
        ).scalar()
    engine.dispose()
    conflicts = sum(
        path.read_text(errors="replace").count("another line holds their seq")
        for path in stack.log_dir.glob("transcript_worker.*.log")
    )

    visitor_lines = [line for v in visitors for line in v.lines]
    acked = [line for line in visitor_lines if line.acked]
    not_at_operator = [
        line.body
        for v in visitors
        for line in v.lines
        if line.acked and line.body not in operators[v.index // VISITORS_PER_SITE].bodies()
    ]
    visitor_lines_twice = [b for o in operators for b, n in o.bodies().items() if n > 1 and b.startswith("v")]
    not_archived_v = [line.body for line in acked if line.body not in archived]
    operator_sent = {body: index for o in operators for body, index in o.sent.items()}
    receipted = {body for o in operators for body in o.sent if body in o.client.receipts}
    bounced = {body for o in operators for body in o.sent if body in o.errors()}
    silent = sorted(set(operator_sent) - receipted - bounced)
    # A line the gateway's socket took just before a SIGKILL gets neither a receipt nor
    # an error (the server handed it over, the process died before logging it): the
    # next owner tells the operator to resend such lines, in that visitor's window.
    covered = [b for o in operators for b in silent if b in o.sent and o.covered(b)]
    notices = sum(len(o.notices()) for o in operators)
    not_shown = sorted(body for body in receipted if not visitors[operator_sent[body]].shown[body])
    shown_twice = sorted(b for v in visitors for b, n in v.shown.items() if n > 1)
    not_archived_o = sorted(body for body in receipted if body not in archived)
    codes = collections.Counter(code for line in visitor_lines for code in line.answers)
    report = {
        "timeline": timeline,
        "visitor lines sent": len(visitor_lines),
        "visitor lines acknowledged (200)": len(acked),
        "visitor answers by HTTP code": dict(codes),
        "acknowledged visitor lines not at the operator": len(not_at_operator),
        "acknowledged visitor lines not archived": len(not_archived_v),
        "visitor lines shown twice to an operator": len(visitor_lines_twice),
        "operator lines sent": len(operator_sent),
        "operator lines receipted": len(receipted),
        "operator lines bounced with an error": len(bounced),
        "operator lines with neither receipt nor error": len(silent),
        "  of which covered by a restart notice received after them": len(covered),
        "restart notices received by operators": notices,
        "receipted operator lines never shown to the visitor": len(not_shown),
        "receipted operator lines not archived": len(not_archived_o),
        "lines shown twice to a visitor": len(shown_twice),
        "lines offered again under a new seq (same id, shown once)": sum(v.offered_again for v in visitors),
        "archived (conversation, seq) pairs held by two lines": shared_seq,
        "seq conflicts refused by the archive": conflicts,
        "gateway deaths we did not cause": gateway_deaths,
        "services alive at the end": {name: stack.alive(name) for name in HEALTH_PORTS},
    }
    print("\n" + json.dumps(report, indent=1))
    (stack.log_dir / "report.json").write_text(json.dumps(report, indent=1))
    examples = {
        "not at operator": not_at_operator[:10],
        "not shown": not_shown[:10],
        "silent": silent[:10],
        "shown twice": shown_twice[:10],
        "operator got twice": visitor_lines_twice[:10],
        "not archived": (not_archived_v + not_archived_o)[:10],
    }
    print(json.dumps(examples))
    (stack.log_dir / "examples.json").write_text(json.dumps(examples, indent=1))
    assert len(acked) > 0 and len(receipted) > 0, "no load got through"
    assert not not_at_operator, examples
    assert not not_archived_v, examples
    assert not visitor_lines_twice, examples
    assert not not_shown, examples
    assert not not_archived_o, examples
    assert not shown_twice, examples
    assert shared_seq == 0
    assert stack.alive("im_gateway")
    assert not gateway_deaths
    # Every operator line: receipted, bounced, or covered by a restart notice after it.
    assert not sorted(set(silent) - set(covered)), examples
