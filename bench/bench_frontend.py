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

``--compare TREE,TREE`` measures instead the frontend's CPU per widget boot, per
returning page view and per accepted line, with wrk for the page views (20 connections)
and WebSocket visitors for the lines, once per tree in turn (a checkout of another
commit: its ``services.rpc_frontend`` and ``libs`` run, on the same sandbox), rounds
alternating (A B B A …), so that before and after see the same machine. CPU comes
from /proc/<pid>/stat of the frontend process; the bare confirmed publishes of the same
round are the lines' baseline. ``--profile DIR`` runs each frontend under pyinstrument
(``python -m pyinstrument --load=DIR/<tree>-<n>.pyisession`` shows one).

    .venv/bin/python bench/bench_frontend.py --compare /tmp/before,/tmp/after --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tornado.httpclient
import tornado.websocket

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e_chat import new_visitors  # noqa: E402
from bench.e2e_http import BOOT_BODY, Load, load, returning_body  # noqa: E402
from bench.e2e_procs import cpu_seconds  # noqa: E402
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
        baseline_per_s = await bare_publishes(bus, site_id, visitors_n, messages_n)

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


# --- --compare: CPU per unit of one frontend process, trees alternating ------------------

# Page views the tokens leave room for: no returning visitor goes over the default
# HABLA_VISITOR_PAGEVIEWS_PER_MIN (30) in a load, so every view is an accepted one.
VIEWS_PER_TOKEN = 25
VIEWS_PER_S_ROOM = 6_000


def not_run() -> Load:
    return Load(0, 0.0, 0.0, 0.0, "")


@dataclass
class Round:
    tree: str
    boots: Load = dataclasses.field(default_factory=not_run)
    boot_cpu_us: float = 0.0
    views: Load = dataclasses.field(default_factory=not_run)
    view_cpu_us: float = 0.0
    lines_per_s: float = 0.0
    line_cpu_us: float = 0.0
    publishes_per_s: float = 0.0

    def line_ratio(self) -> float:
        return self.lines_per_s / self.publishes_per_s if self.publishes_per_s else 0.0


@asynccontextmanager
async def frontend_of(tree: Path, settings: Settings, profile: Path | None) -> AsyncIterator[tuple[str, int]]:
    """``python -m services.rpc_frontend`` of ``tree`` (its code, on our sandbox); yields
    (base URL, pid). ``profile``: under pyinstrument, its session written there when it stops."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    own = dataclasses.replace(
        settings,
        frontend_port=port,
        frontend_id=f"bench-{uuid.uuid4().hex[:6]}",
        public_url=base,
        log_level="WARNING",
        visitor_messages_per_min=1_000_000,  # one IP and a few visitors as fast as they can
        ip_requests_per_min=100_000_000,
    )
    profiler = ["-m", "pyinstrument", "-r", "pyisession", "-o", str(profile)] if profile else []
    command = [sys.executable, *profiler, "-m"]
    server = await asyncio.create_subprocess_exec(*command, "services.rpc_frontend", cwd=tree, env=own.to_env())
    try:
        client = tornado.httpclient.AsyncHTTPClient()
        for _ in range(200):
            try:
                await client.fetch(f"{base}/healthz")
                break
            except Exception:
                if server.returncode is not None:
                    raise RuntimeError(f"the frontend of {tree} exited ({server.returncode})") from None
                await asyncio.sleep(0.1)
        yield base, server.pid
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)


async def measure_round(
    tree: Path, settings: Settings, site_id: str, args: argparse.Namespace, profile: Path | None
) -> Round:
    done = Round(str(tree))
    async with frontend_of(tree, settings, profile) as (base, pid):
        api = f"{base}/api/sites/{site_id}"
        url = f"{api}/session"
        client = tornado.httpclient.AsyncHTTPClient(max_clients=50)
        await client.fetch(f"{api}/status")  # the site cache fills
        await load(url, [BOOT_BODY], args.connections, 1.0)  # warm-up (not counted)

        async def cpu_per(run: Awaitable[Load]) -> tuple[Load, float]:
            before = cpu_seconds(pid)
            answered = await run
            return answered, (cpu_seconds(pid) - before) / max(1, answered.requests) * 1e6

        if "boots" in args.phases:
            done.boots, done.boot_cpu_us = await cpu_per(load(url, [BOOT_BODY], args.connections, args.seconds))
        if "views" in args.phases:
            tokens = -(-VIEWS_PER_S_ROOM * round(args.seconds) // VIEWS_PER_TOKEN)
            bodies = [returning_body(visitor.token) for visitor in await new_visitors(api, tokens)]
            done.views, done.view_cpu_us = await cpu_per(load(url, bodies, args.connections, args.seconds))
        if "lines" in args.phases:
            done.lines_per_s, done.line_cpu_us = await lines_of(api, pid, args.visitors, args.messages)
    if "lines" in args.phases:
        bus = await Bus.connect(settings, "bench")
        try:
            done.publishes_per_s = await bare_publishes(bus, site_id, args.visitors, args.messages)
        finally:
            await bus.close()
    return done


async def lines_of(api: str, pid: int, visitors_n: int, each: int) -> tuple[float, float]:
    """Visitors on WebSockets, each waiting for "sent" before its next line: lines/s and
    the frontend's CPU per line (us)."""
    visitors = [Visitor(v.token, v.visitor_id) for v in await new_visitors(api, visitors_n)]
    ws_api = api.replace("http", "ws", 1)
    for visitor in visitors:
        visitor.ws = await tornado.websocket.websocket_connect(f"{ws_api}/ws?token={visitor.token}")
        visitor.reader = asyncio.create_task(visitor.read())
    try:
        await asyncio.gather(*(send_lines(v, 2) for v in visitors))  # first lines claim conversations
        before = cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(send_lines(v, each) for v in visitors))
        elapsed = time.perf_counter() - started
        return visitors_n * each / elapsed, (cpu_seconds(pid) - before) / (visitors_n * each) * 1e6
    finally:
        for visitor in visitors:
            assert visitor.ws is not None
            visitor.ws.close()


async def send_lines(visitor: Visitor, n: int) -> None:
    assert visitor.ws is not None
    for i in range(n):
        message_id = uuid.uuid4().hex
        sent = visitor.expect(message_id)
        await visitor.ws.write_message(json.dumps({"type": "send", "message_id": message_id, "body": f"line {i}"}))
        await asyncio.wait_for(sent, 30)
        visitor.expect(message_id)  # swallow the log echo of our own line


async def bare_publishes(bus: Bus, site_id: str, tasks: int, each: int) -> float:
    """The same number of confirmed publishes, bare, from as many tasks: publishes/s."""
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
        for _ in range(each):
            await bus.publish(topology.VISITOR, f"{site_id}.message", sample, message_id=uuid.uuid4().hex)

    started = time.perf_counter()
    await asyncio.gather(*(publish_all() for _ in range(tasks)))
    return tasks * each / (time.perf_counter() - started)


def compare(settings: Settings, site_id: str, args: argparse.Namespace) -> None:
    trees = [Path(t).resolve() for t in args.compare.split(",") if t]
    order = [tree for r in range(args.rounds) for tree in (trees if r % 2 == 0 else trees[::-1])]
    print(f"rpc_frontend, one process, trees alternating: {' '.join(t.name for t in order)}", flush=True)
    print(f"  load average at start {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    if args.interleave:
        asyncio.run(interleaved(trees, settings, site_id, args))
        return
    rounds: list[Round] = []
    for n, tree in enumerate(order):
        profile = Path(args.profile) / f"{tree.name}-{n}.pyisession" if args.profile else None
        done = asyncio.run(measure_round(tree, settings, site_id, args, profile))
        rounds.append(done)
        load_avg = " ".join(f"{x:.1f}" for x in os.getloadavg())
        refused = "".join(f"  [{x.errors}]" for x in (done.boots, done.views) if x.errors)
        if profile:
            from bench.e2e_profile import where_time_goes

            print("\n".join(where_time_goes(profile)))
        print(
            f"  {tree.name:<10} boots {done.boots.rate:6.0f}/s {done.boot_cpu_us:6.0f} us | "
            f"returning views {done.views.rate:6.0f}/s {done.view_cpu_us:6.0f} us | "
            f"lines {done.lines_per_s:5.0f}/s {done.line_cpu_us:6.0f} us, bare publishes "
            f"{done.publishes_per_s:5.0f}/s ({done.line_ratio():.2f}x) | load {load_avg}" + refused,
            flush=True,
        )
    print("  medians (CPU per unit is the frontend process's own, from /proc):")
    for tree in trees:
        mine = [r for r in rounds if r.tree == str(tree)]

        def med(value: Callable[[Round], float], mine: list[Round] = mine) -> float:
            return statistics.median(value(r) for r in mine)

        print(
            f"  {tree.name:<10} boots {med(lambda r: r.boots.rate):6.0f}/s {med(lambda r: r.boot_cpu_us):6.0f} us | "
            f"returning views {med(lambda r: r.views.rate):6.0f}/s {med(lambda r: r.view_cpu_us):6.0f} us | "
            f"lines {med(lambda r: r.lines_per_s):5.0f}/s {med(lambda r: r.line_cpu_us):6.0f} us "
            f"({med(Round.line_ratio):.2f}x bare publishes)"
        )


async def interleaved(trees: list[Path], settings: Settings, site_id: str, args: argparse.Namespace) -> None:
    """Every tree's frontend running at once, each page-view load cut into ``--interleave``
    slices of about a second, trees taking turns slice by slice (A B B A …): the machine's
    load, which moves within seconds here, falls on every tree alike."""
    async with contextlib.AsyncExitStack() as stack:
        running = [await stack.enter_async_context(frontend_of(tree, settings, None)) for tree in trees]
        slice_s = max(1.0, args.seconds / args.interleave)
        tokens = -(-VIEWS_PER_S_ROOM * round(min(60.0, slice_s * args.interleave)) // VIEWS_PER_TOKEN)
        urls, returning = [], []
        for base, _ in running:
            api = f"{base}/api/sites/{site_id}"
            await tornado.httpclient.AsyncHTTPClient().fetch(f"{api}/status")  # the site cache fills
            await load(f"{api}/session", [BOOT_BODY], args.connections, 1.0)  # warm-up (not counted)
            urls.append(f"{api}/session")
            returning.append([returning_body(v.token) for v in await new_visitors(api, tokens)])
        for phase in ("boots", "views"):
            if phase not in args.phases:
                continue
            answered = [0] * len(trees)
            cpu = [0.0] * len(trees)
            elapsed = [0.0] * len(trees)
            refused = [0] * len(trees)
            for k in range(args.interleave):
                for i in range(len(trees)) if k % 2 == 0 else reversed(range(len(trees))):
                    bodies = [BOOT_BODY] if phase == "boots" else returning[i]
                    before, started = cpu_seconds(running[i][1]), time.perf_counter()
                    done = await load(urls[i], bodies, args.connections, slice_s)
                    cpu[i] += cpu_seconds(running[i][1]) - before
                    elapsed[i] += time.perf_counter() - started
                    answered[i] += done.requests
                    refused[i] += done.refused
            load_avg = " ".join(f"{x:.1f}" for x in os.getloadavg())
            for i, tree in enumerate(trees):
                print(
                    f"  {tree.name:<12} {phase:<5} {answered[i] / max(elapsed[i], 1e-9):6.0f}/s accepted, "
                    f"{cpu[i] / max(1, answered[i]) * 1e6:6.0f} us CPU each ({answered[i]} in {args.interleave} "
                    f"slices{f', {refused[i]} refused' if refused[i] else ''}) | load {load_avg}",
                    flush=True,
                )
        if "lines" in args.phases:
            await interleaved_lines(trees, running, settings, site_id, args)


async def interleaved_lines(
    trees: list[Path], running: list[tuple[str, int]], settings: Settings, site_id: str, args: argparse.Namespace
) -> None:
    """Accepted lines (``--visitors`` on WebSockets, ``--messages`` each per slice, each
    waiting for "sent") of each tree, and as many bare confirmed publishes from as many
    tasks, slice by slice in turn: the ratio's two sides see the same machine."""
    everyone: list[list[Visitor]] = []
    for base, _ in running:
        api = f"{base}/api/sites/{site_id}"
        visitors = [Visitor(v.token, v.visitor_id) for v in await new_visitors(api, args.visitors)]
        for visitor in visitors:
            visitor.ws = await tornado.websocket.websocket_connect(
                f"{api.replace('http', 'ws', 1)}/ws?token={visitor.token}"
            )
            visitor.reader = asyncio.create_task(visitor.read())
        await asyncio.gather(*(send_lines(v, 2) for v in visitors))  # first lines claim conversations
        everyone.append(visitors)
    bus = await Bus.connect(settings, "bench")
    lines, cpu, elapsed = [0] * len(trees), [0.0] * len(trees), [0.0] * len(trees)
    published, publish_s = 0, 0.0
    try:
        for k in range(args.interleave):
            for i in range(len(trees)) if k % 2 == 0 else reversed(range(len(trees))):
                before, started = cpu_seconds(running[i][1]), time.perf_counter()
                await asyncio.gather(*(send_lines(v, args.messages) for v in everyone[i]))
                elapsed[i] += time.perf_counter() - started
                cpu[i] += cpu_seconds(running[i][1]) - before
                lines[i] += len(everyone[i]) * args.messages
            started = time.perf_counter()
            await bare_publishes(bus, site_id, args.visitors, args.messages)
            publish_s += time.perf_counter() - started
            published += args.visitors * args.messages
    finally:
        await bus.close()
        for visitor in (v for visitors in everyone for v in visitors):
            assert visitor.ws is not None
            visitor.ws.close()
    bare = published / publish_s
    load_avg = " ".join(f"{x:.1f}" for x in os.getloadavg())
    for i, tree in enumerate(trees):
        rate = lines[i] / elapsed[i]
        print(
            f"  {tree.name:<12} lines {rate:6.0f}/s accepted, {cpu[i] / lines[i] * 1e6:6.0f} us CPU each; bare "
            f"confirmed publishes {bare:6.0f}/s ({rate / bare:.2f}x) | load {load_avg}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=int, default=200)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--replies", type=int, default=5)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--latency-rate", type=float, default=50, help="paced replies per second")
    parser.add_argument("--compare", metavar="TREE,TREE", help="CPU per boot, view and line of each tree, alternating")
    parser.add_argument("--rounds", type=int, default=2, help="--compare: rounds (each runs every tree once)")
    parser.add_argument("--seconds", type=float, default=5.0, help="--compare: seconds of each page-view load")
    parser.add_argument("--connections", type=int, default=20, help="--compare: page views at once")
    parser.add_argument("--profile", metavar="DIR", help="--compare: pyinstrument sessions in DIR")
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="SLICES",
        help="--compare: all trees at once, each load in SLICES turns (lines: --messages each turn)",
    )
    parser.add_argument(
        "--phases",
        type=lambda text: text.split(","),
        default=["boots", "views", "lines"],
        help="--compare: which of boots,views,lines (default all)",
    )
    args = parser.parse_args()
    with sandbox.sandboxed("bench-frontend") as settings:
        engine = db.engine(settings)
        with engine.begin() as conn:
            account = site_store.account_for_email(conn, "bench@habla.localhost")
            site_id = site_store.create_site(conn, account, "Bench").id
        engine.dispose()
        if args.compare:
            compare(settings, site_id, args)
            return
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
