"""Load on rpc_frontend: N concurrent WebSocket visitors sending and receiving.

Starts the real service (`python -m services.rpc_frontend`) in a subprocess against
a RabbitMQ vhost, Redis prefix and MariaDB database of its own (all removed after),
then prints:

* accepted messages/s: visitors send lines over their WebSockets, each waiting for
  "sent" (in the log and confirmed by RabbitMQ) before the next; the baseline is the
  same number of bare confirmed publishes from as many concurrent tasks, straight to
  RabbitMQ, so the ratio is what the frontend costs on top of the broker;
* deliveries/s with every visitor receiving replies back to back, and delivery
  latency p50/p99 with replies paced at a steady rate (so it is the system's latency,
  not our own queue): from an operator reply's log append + VisitorDelivery publish (as
  the gateway does) to the visitor's WebSocket receiving it;
* server memory per idle WebSocket connection (RSS growth / connections);
* MySQL statements the frontend issued during the run (its own counter; must be 0).

    .venv/bin/python bench/bench_frontend.py --visitors 200 --messages 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import tornado.httpclient
import tornado.websocket

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from libs.common import (  # noqa: E402
    codec,
    db,
    state,
    topology,
)
from libs.common.db import site_store  # noqa: E402
from libs.common.messaging import Bus  # noqa: E402
from libs.common.settings import Settings  # noqa: E402
from libs.common.state.conversations import ConversationLog  # noqa: E402
from libs.common.state.sessions import VisitorSessions  # noqa: E402
from tools import sandbox  # noqa: E402
from tools.prosody import free_port  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Visitor:
    def __init__(self, token: str, visitor_id: str) -> None:
        self.token, self.visitor_id = token, visitor_id
        self.conversation_id = ""
        self.ws: tornado.websocket.WebSocketClientConnection | None = None
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}  # message_id -> sent/entry event
        self.reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.ws is not None
        while True:
            raw = await self.ws.read_message()
            if raw is None:
                return
            event = json.loads(raw)
            if event["type"] == "sent":
                self._settle(event["message_id"], event)
            elif event["type"] == "entries":
                for entry in event["entries"]:
                    self._settle(entry["message_id"], entry)

    def _settle(self, key: str, value: dict[str, Any]) -> None:
        future = self.waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)

    def expect(self, key: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[key] = future
        return future


async def metric(base: str, name: str) -> float:
    body = (await tornado.httpclient.AsyncHTTPClient().fetch(f"{base}/metrics")).body.decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def bench(
    settings: Settings,
    site_id: str,
    visitors_n: int,
    messages_n: int,
    replies_n: int,
    latency_samples: int,
    latency_rate: float,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    frontend_id = f"bench-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "HABLA_AMQP_URL": settings.amqp_url,
        "HABLA_REDIS_PREFIX": settings.redis_prefix,
        "HABLA_MYSQL_URL": settings.mysql_url,
        "HABLA_FRONTEND_PORT": str(port),
        "HABLA_FRONTEND_ID": frontend_id,
        "HABLA_PUBLIC_URL": base,
        "HABLA_LOG_LEVEL": "WARNING",
        # The benchmark is one IP sending as fast as it can: lift the limits it measures around.
        "HABLA_VISITOR_MESSAGES_PER_MIN": "1000000",
        "HABLA_IP_REQUESTS_PER_MIN": "100000000",
    }
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.rpc_frontend", cwd=ROOT, env=env)
    client = tornado.httpclient.AsyncHTTPClient(max_clients=100)
    bus = await Bus.connect(settings, "bench")
    redis = state.connect(settings)
    try:
        for _ in range(100):
            try:
                await client.fetch(f"{base}/healthz")
                break
            except Exception:
                await asyncio.sleep(0.1)
        api = f"{base}/api/sites/{site_id}"
        await client.fetch(f"{api}/status")  # the site directory fills its Redis copy (one MySQL read)
        statements_before = await metric(base, "habla_frontend_mysql_statements_total")

        async def session() -> Visitor:
            body = json.dumps({"page": {"url": "http://127.0.0.1/bench", "title": "Bench"}})
            data = json.loads((await client.fetch(f"{api}/session", method="POST", body=body)).body)
            return Visitor(data["token"], data["visitor_id"])

        visitors = await asyncio.gather(*(session() for _ in range(visitors_n)))
        await asyncio.sleep(0.5)
        rss_before = rss_kib(server.pid)
        ws_base = base.replace("http", "ws")
        for visitor in visitors:
            visitor.ws = await tornado.websocket.websocket_connect(
                f"{ws_base}/api/sites/{site_id}/ws?token={visitor.token}"
            )
            visitor.reader = asyncio.create_task(visitor.read())
        await asyncio.sleep(1.0)
        rss_idle = rss_kib(server.pid)
        per_connection_kib = (rss_idle - rss_before) / visitors_n

        # --- sending -----------------------------------------------------------------------
        async def send_all(visitor: Visitor) -> None:
            assert visitor.ws is not None
            for i in range(messages_n):
                message_id = uuid.uuid4().hex
                sent = visitor.expect(message_id)
                await visitor.ws.write_message(
                    json.dumps({"type": "send", "message_id": message_id, "body": f"line {i}"})
                )
                await asyncio.wait_for(sent, 30)
                visitor.expect(message_id)  # swallow the log echo of our own line

        started = time.perf_counter()
        await asyncio.gather(*(send_all(v) for v in visitors))
        send_s = time.perf_counter() - started
        total = visitors_n * messages_n
        accepted_per_s = total / send_s
        sessions = VisitorSessions(redis, settings)
        for visitor in visitors:
            visitor.conversation_id = (await sessions.get(visitor.visitor_id) or {}).get("conversation_id", "")
            visitor.waiting.clear()

        # Baseline: the same number of confirmed publishes, bare, from as many tasks.
        sample = codec.ChatMessage(
            message_id="x",
            conversation_id="c",
            site_id=site_id,
            visitor_id="v",
            sender=codec.SenderKind.VISITOR,
            body="line",
            sent_at_ms=1,
            seq=1,
        )

        async def publish_all() -> None:
            for _ in range(messages_n):
                await bus.publish(topology.VISITOR, f"{site_id}.message", sample, message_id=uuid.uuid4().hex)

        started = time.perf_counter()
        await asyncio.gather(*(publish_all() for _ in range(visitors_n)))
        baseline_per_s = total / (time.perf_counter() - started)

        # --- deliveries ---------------------------------------------------------------------
        log = ConversationLog(redis, settings)

        async def reply(visitor: Visitor, text: str) -> float:
            """As the gateway does: log, then VisitorDelivery; ms until the visitor's socket has it."""
            message_id = uuid.uuid4().hex
            arrived = visitor.expect(message_id)
            began = time.perf_counter()
            sent_at = int(time.time() * 1000)
            entry = {"kind": "message", "sender": "operator", "body": text, "sent_at_ms": sent_at, "operator_name": "B"}
            appended = await log.append(visitor.conversation_id, message_id, entry)
            message = codec.ChatMessage(
                message_id=message_id,
                conversation_id=visitor.conversation_id,
                site_id=site_id,
                visitor_id=visitor.visitor_id,
                sender=codec.SenderKind.OPERATOR,
                body=text,
                sent_at_ms=sent_at,
                seq=appended.seq,
                operator_name="B",
            )
            delivery = codec.VisitorDelivery(
                visitor_id=visitor.visitor_id, site_id=site_id, conversation_id=visitor.conversation_id, message=message
            )
            await bus.publish(topology.DELIVER, frontend_id, delivery, mandatory=False)
            await asyncio.wait_for(arrived, 30)
            return (time.perf_counter() - began) * 1000

        # Saturated: every visitor gets replies back to back (throughput).
        async def reply_all(visitor: Visitor) -> None:
            for i in range(replies_n):
                await reply(visitor, f"reply {i}")

        started = time.perf_counter()
        await asyncio.gather(*(reply_all(v) for v in visitors))
        delivered_per_s = visitors_n * replies_n / (time.perf_counter() - started)

        # Paced (open loop, like operators typing): latency without our own queueing.
        latencies: list[float] = []
        pending: list[asyncio.Task[None]] = []

        async def timed(visitor: Visitor, i: int) -> None:
            latencies.append(await reply(visitor, f"paced {i}"))

        for i in range(latency_samples):
            pending.append(asyncio.create_task(timed(visitors[i % visitors_n], i)))
            await asyncio.sleep(1 / latency_rate)
        await asyncio.gather(*pending)
        statements = await metric(base, "habla_frontend_mysql_statements_total") - statements_before

        print(f"rpc_frontend bench: {visitors_n} WebSocket visitors, {messages_n} lines each, {replies_n} replies each")
        print(
            f"  accepted messages/s      {accepted_per_s:8.0f}   ({total} lines in {send_s:.2f} s, logged + confirmed)"
        )
        print(f"  baseline publishes/s     {baseline_per_s:8.0f}   (bare confirmed publishes, same concurrency)")
        print(f"  ratio to baseline        {accepted_per_s / baseline_per_s:8.2f}")
        print(
            f"  deliveries/s             {delivered_per_s:8.0f}   (saturated: {replies_n} replies per visitor at once)"
        )
        print(f"  delivery latency p50     {statistics.median(latencies):8.1f} ms  (paced at {latency_rate}/s)")
        print(f"  delivery latency p99     {percentile(latencies, 0.99):8.1f} ms  ({len(latencies)} replies)")
        print(f"  memory per idle socket   {per_connection_kib:8.1f} KiB  (server RSS {rss_before} -> {rss_idle} KiB)")
        print(
            f"  MySQL statements         {statements:8.0f}   (frontend's own counter, after the site cache was filled)"
        )
        for visitor in visitors:
            if visitor.ws is not None:
                visitor.ws.close()
        if statements != 0:
            raise SystemExit("the frontend issued MySQL statements on chat paths")
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 20)
        await bus.close()
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=int, default=200)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--replies", type=int, default=5)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--latency-rate", type=float, default=50, help="paced replies per second")
    args = parser.parse_args()
    with sandbox.sandboxed("bench-frontend") as settings:
        engine = db.engine(settings)
        with engine.begin() as conn:
            account = site_store.account_for_email(conn, "bench@habla.localhost")
            site_id = site_store.create_site(conn, account, "Bench").id
        engine.dispose()
        asyncio.run(
            bench(
                settings,
                site_id,
                args.visitors,
                args.messages,
                args.replies,
                args.latency_samples,
                args.latency_rate,
            )
        )


if __name__ == "__main__":
    main()
