"""im_gateway throughput and latency, against a bare slixmpp echo component on the same Prosody.

Run: .venv/bin/python bench/bench_gateway.py [--messages 1000] [--pageviews 1000] [--churn-seconds 10] [--profile]

Everything runs in one process and one event loop (Prosody, RabbitMQ, Redis and
MariaDB are the real local servers), in an isolated vhost, Redis prefix, database and
Prosody that are removed at the end:

1. baseline: a bare slixmpp ComponentXMPP on the component domain; an operator client
   sends N messages to it (client → component) and it sends N to the client
   (component → client): messages/s and one-way latency p50/p99;
2. the gateway on the same domain of the same Prosody: N visitor lines published on
   habla.visitor until they reach the operator's client (visitor → operator), then N
   more as a backlog (published while the gateway's consumer is cancelled, then
   drained: the gateway's own pace, not this bench's publisher's), and N operator
   lines until they arrive on habla.deliver (operator → visitor); for each, the CPU of
   this process per line and the gateway's Redis commands and round trips per line;
3. page views as a backlog drained (published while the gateway's consumer is
   cancelled, then consumed: the gateway's own pace and CPU, without the publisher's):
   widget boots (a new visitor: its session saved as the frontend does, then the
   VisitorEvent ARRIVED and the PageView it publishes) and returning visitors' page
   views; page views/s, CPU per page view and the gateway's Redis commands and round
   trips per page view, the site refresh it sets off (bot summary, rosters) included;
4. presence under churn: visitors clicking through pages while one operator follows
   some of them: presence stanzas per operator per second vs page views per second.

--profile runs the gateway phases under pyinstrument (sessions kept in
/tmp/habla-bench-gateway-<phase>.pyisession) and prints where the time inside
event-loop callbacks goes, by owner. The bench's own clients (the publisher standing
in for the frontend, the operator's slixmpp client) share the process and the profile:
their frames are the ones under bench/ and tests/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis.asyncio import connection as redis_connection
from slixmpp import JID, ComponentXMPP

from libs.common import codec, db, state, topology
from libs.common.messaging import Bus, Envelope
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import SiteStatusReader
from libs.common.state.sessions import VisitorSessions
from libs.common.state.shared import SharedConnection
from services.im_gateway.gateway import Gateway
from tests.im_gateway.conftest import connect_operator, create_site
from tests.im_gateway.operator_client import OperatorClient
from tools import prosody, sandbox

# Messages sent one at a time (each waits for the previous) for latency without queueing.
ONE_BY_ONE = 200


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def summary(name: str, n: int, first_sent: float, arrivals: dict[str, float], sent: dict[str, float]) -> dict[str, Any]:
    arrivals = {k: t for k, t in arrivals.items() if k in sent}
    latencies = [arrivals[k] - sent[k] for k in arrivals]
    span = max(arrivals.values()) - first_sent
    row = {
        "name": name,
        "n": len(arrivals),
        "rate": len(arrivals) / span,
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
    }
    print(
        f"  {name:<48} {row['n']:>5} msgs {row['rate']:>7.0f} msg/s  p50 {row['p50']:7.1f} ms  p99 {row['p99']:7.1f} ms"
    )
    return row


async def wait_until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"timed out waiting for {what}")


class Echo(ComponentXMPP):
    """The baseline: a bare component that records arrivals."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            settings.xmpp_component_domain,
            settings.xmpp_component_secret,
            settings.xmpp_component_host,
            settings.xmpp_component_port,
        )
        self.arrivals: dict[str, float] = {}
        self.ready = asyncio.Event()
        self.add_event_handler("session_start", lambda _e: self.ready.set())
        self.add_event_handler("message", self._on_message)

    def _on_message(self, msg: Any) -> None:
        self.arrivals[msg["body"]] = time.perf_counter()


async def baseline(settings: Settings, op: OperatorClient, n: int) -> list[dict[str, Any]]:
    echo = Echo(settings)
    echo.connect()
    await asyncio.wait_for(echo.ready.wait(), 10)
    target = f"echo@{settings.xmpp_component_domain}"
    sent: dict[str, float] = {}
    cpu = time.process_time()
    first = time.perf_counter()
    for i in range(n):
        body = f"c{i}"
        sent[body] = time.perf_counter()
        op.say(target, body)
        if i % 100 == 99:
            await asyncio.sleep(0)  # let the send queue drain like a real client would
    await wait_until(lambda: len(echo.arrivals) >= n, 60, "echo arrivals")
    rows = [summary("baseline client -> component", n, first, echo.arrivals, sent)]
    print(f"  {'':<48} CPU {(time.process_time() - cpu) / n * 1000:.2f} ms/line (whole process)")

    sent = {}
    mark = len(op.received)
    cpu = time.process_time()
    first = time.perf_counter()
    for i in range(n):
        body = f"e{i}"
        sent[body] = time.perf_counter()
        echo.send_message(mto=JID(op.jid), mbody=body, mtype="chat", mfrom=target)
        if i % 100 == 99:
            await asyncio.sleep(0)
    await wait_until(lambda: len(op.received) - mark >= n, 60, "client arrivals")
    offset = time.perf_counter() - time.monotonic()
    arrivals = {r.body: r.at + offset for r in op.received[mark:]}
    rows.append(summary("baseline component -> client", n, first, arrivals, sent))
    print(f"  {'':<48} CPU {(time.process_time() - cpu) / n * 1000:.2f} ms/line (whole process)")
    # One message at a time: latency without queueing.
    sent, arrivals = {}, {}
    for i in range(ONE_BY_ONE):
        body = f"s{i}"
        sent[body] = time.perf_counter()
        op.say(target, body)
        await wait_until(lambda b=body: b in echo.arrivals, 10, "echo arrival")
    rows.append(summary("baseline client -> component, one at a time", ONE_BY_ONE, sent["s0"], echo.arrivals, sent))
    sent = {}
    mark = len(op.received)
    for i in range(ONE_BY_ONE):
        body = f"t{i}"
        sent[body] = time.perf_counter()
        echo.send_message(mto=JID(op.jid), mbody=body, mtype="chat", mfrom=target)
        await wait_until(lambda n=i: len(op.received) - mark > n, 10, "client arrival")
    offset = time.perf_counter() - time.monotonic()
    arrivals = {r.body: r.at + offset for r in op.received[mark:]}
    rows.append(summary("baseline component -> client, one at a time", ONE_BY_ONE, sent["t0"], arrivals, sent))
    echo.disconnect(wait=1.0)
    await asyncio.wait_for(echo.disconnected, 5)
    return rows


class RedisCount:
    """The gateway's Redis commands and round trips (writes to a socket), counted in
    process: every command its client packs and every write, on its pool's connections
    and on its shared connection (state.shared: one write carries the commands of one
    event-loop pass), plus the marks its own marking connection
    (services.im_gateway.dedupe) sends. The bench's
    publisher has a client of its own, so what stands in for the frontend is not
    counted; the gateway's background work (lease, heartbeat, site bot) is, and over a
    phase of 1,000 lines it is a few percent."""

    def __init__(self, gateway: Gateway) -> None:
        self.commands = 0
        self.round_trips = 0
        pool = gateway.redis.connection_pool
        in_use: Any = getattr(pool, "_in_use_connections", set())
        cls: Any = redis_connection.AbstractConnection
        pack, send = cls.pack_command, cls.send_packed_command
        counter = self
        shared: Any = gateway.redis if isinstance(gateway.redis, SharedConnection) else None

        def counted_pack(conn: Any, *args: Any) -> Any:
            if conn in in_use or (shared is not None and conn is shared._conn):
                counter.commands += 1
            return pack(conn, *args)

        async def counted_send(conn: Any, *args: Any, **kwargs: Any) -> Any:
            if conn in in_use:
                counter.round_trips += 1
            return await send(conn, *args, **kwargs)

        cls.pack_command, cls.send_packed_command = counted_pack, counted_send
        if shared is not None:
            shared_write = shared._write

            def counted_write(conn: Any) -> None:
                if shared._out and conn is shared._conn:
                    counter.round_trips += 1
                shared_write(conn)

            shared._write = counted_write
        marks = gateway.desk.delivered
        mark_send = marks._send

        def counted_mark(*parts: Any) -> Any:
            counter.commands += 1
            counter.round_trips += 1
            return mark_send(*parts)

        marks._send = counted_mark  # type: ignore[method-assign]

    def now(self) -> tuple[int, int]:
        return self.commands, self.round_trips


def cost(name: str, n: int, cpu_before: float, redis_before: tuple[int, int], count: RedisCount) -> None:
    """CPU of this process (gateway and bench clients) and the gateway's Redis work, per line."""
    cpu = (time.process_time() - cpu_before) / n * 1000
    commands, round_trips = (now - before for now, before in zip(count.now(), redis_before, strict=True))
    print(
        f"  {'':<48} CPU {cpu:.2f} ms/line (whole process); gateway Redis "
        f"{commands / n:.1f} commands, {round_trips / n:.1f} round trips per line"
    )


async def through_gateway(
    settings: Settings,
    gateway: Gateway,
    op: OperatorClient,
    bus: Bus,
    site_id: str,
    n: int,
    conversations: int,
    own_redis: Any,
    count: RedisCount,
) -> list[dict[str, Any]]:
    """N lines each way spread over ``conversations`` visitors (round robin)."""
    sessions, log = VisitorSessions(own_redis, settings), ConversationLog(own_redis, settings)
    frontend_id = f"{settings.frontend_id}-{conversations}"
    chats: list[tuple[str, str, str]] = []  # (visitor id, conversation id, JID)
    for _ in range(conversations):
        visitor_id, conversation_id = sessions.new_visitor_id(), uuid.uuid4().hex
        await sessions.save(
            visitor_id,
            site_id,
            {"frontend_id": frontend_id, "conversation_id": conversation_id, "page_url": "https://b.example/"},
        )
        chats.append((visitor_id, conversation_id, await gateway.desk.names.jid_of(visitor_id)))
    delivered: dict[str, float] = {}
    arrived: collections.Counter[str] = collections.Counter()  # new deliveries by tag

    async def on_delivery(envelope: Envelope) -> None:
        if envelope.struct.message is not None:
            body = envelope.struct.message.body
            if body not in delivered:
                arrived[body.split("o", 1)[0]] += 1
            delivered[body] = time.perf_counter()

    await bus.consume(topology.frontend_delivery_queue(frontend_id), on_delivery)

    async def visitor_line(chat: tuple[str, str, str], body: str) -> None:
        visitor_id, conversation_id, _jid = chat
        message_id = uuid.uuid4().hex
        appended = await log.append(
            conversation_id, message_id, {"kind": "message", "sender": "visitor", "body": body, "sent_at_ms": 0}
        )
        await bus.publish(
            topology.VISITOR,
            f"{site_id}.message",
            codec.ChatMessage(
                message_id=message_id,
                conversation_id=conversation_id,
                site_id=site_id,
                visitor_id=visitor_id,
                sender=codec.SenderKind.VISITOR,
                body=body,
                sent_at_ms=int(time.time() * 1000),
                seq=appended.seq,
            ),
        )

    # Warm up (assignment, presence) outside the measurement.
    for i, chat in enumerate(chats):
        await visitor_line(chat, f"warm{conversations}-{i}")
    await wait_until(
        lambda: sum(1 for r in op.received if r.body.startswith(f"warm{conversations}-")) >= conversations,
        30,
        "warm-up lines",
    )

    tag = f"c{conversations}"
    mark = len(op.received)
    sent: dict[str, float] = {}
    cpu, redis_before = time.process_time(), count.now()
    first = time.perf_counter()
    for start in range(0, n, 50):  # 50 publishes in flight, as a busy frontend would have
        batch = [f"{tag}v{i}" for i in range(start, min(n, start + 50))]
        for body in batch:
            sent[body] = time.perf_counter()
        await asyncio.gather(*(visitor_line(chats[i % conversations], b) for i, b in enumerate(batch, start)))
    await wait_until(lambda: len(op.received) - mark >= n, 120, "visitor lines at the operator")
    offset = time.perf_counter() - time.monotonic()
    arrivals = {r.body: r.at + offset for r in op.received[mark:] if r.body in sent}
    label = f"{conversations} conversation{'s' if conversations > 1 else ''}"
    rows = [summary(f"gateway visitor -> operator, {label}", n, first, arrivals, sent)]
    cost("", n, cpu, redis_before, count)

    # The same lines as a backlog: all published while the gateway's consumer is
    # cancelled, then drained. What the phase above measures is capped by this bench's
    # own publisher (a log append and a confirmed publish per line, in this process);
    # this one is the gateway's own pace.
    visitor_queue = gateway._consumers[0]  # the visitor queue's consumer (gateway.start)
    await visitor_queue.cancel()
    backlog = [f"{tag}b{i}" for i in range(n)]
    for start in range(0, n, 50):
        await asyncio.gather(
            *(visitor_line(chats[i % conversations], b) for i, b in enumerate(backlog[start : start + 50], start))
        )
    mark = len(op.received)
    cpu, redis_before = time.process_time(), count.now()
    first = time.perf_counter()
    sent = dict.fromkeys(backlog, first)
    await visitor_queue.start()
    await wait_until(lambda: len(op.received) - mark >= n, 120, "the backlog at the operator")
    offset = time.perf_counter() - time.monotonic()
    arrivals = {r.body: r.at + offset for r in op.received[mark:] if r.body in sent}
    rows.append(summary(f"gateway visitor -> operator, backlog, {label}", n, first, arrivals, sent))
    cost("", n, cpu, redis_before, count)

    sent = {}
    cpu, redis_before = time.process_time(), count.now()
    first = time.perf_counter()
    for i in range(n):
        body = f"{tag}o{i}"
        sent[body] = time.perf_counter()
        op.say(chats[i % conversations][2], body)
        if i % 100 == 99:
            await asyncio.sleep(0)
    # Counted as they arrive: a scan of every delivery on each check costs the shared
    # process (and so the gateway) more CPU the longer the phase.
    await wait_until(lambda: arrived[tag] >= n, 120, "operator lines delivered")
    rows.append(summary(f"gateway operator -> visitor, {label}", n, first, delivered, sent))
    cost("", n, cpu, redis_before, count)
    if conversations > 1:
        return rows
    # One message at a time: latency without queueing.
    sent = {}
    mark = len(op.received)
    for i in range(ONE_BY_ONE):
        body = f"{tag}s{i}"
        sent[body] = time.perf_counter()
        await visitor_line(chats[0], body)
        await wait_until(lambda n=i: len(op.received) - mark > n, 10, "visitor line")
    offset = time.perf_counter() - time.monotonic()
    arrivals = {r.body: r.at + offset for r in op.received[mark:] if r.body in sent}
    rows.append(summary("gateway visitor -> operator, one at a time", ONE_BY_ONE, sent[f"{tag}s0"], arrivals, sent))
    sent = {}
    for i in range(ONE_BY_ONE):
        body = f"{tag}t{i}"
        sent[body] = time.perf_counter()
        op.say(chats[0][2], body)
        await wait_until(lambda b=body: b in delivered, 10, "operator line")
    rows.append(summary("gateway operator -> visitor, one at a time", ONE_BY_ONE, sent[f"{tag}t0"], delivered, sent))
    return rows


async def page_views(
    settings: Settings, gateway: Gateway, bus: Bus, site_id: str, n: int, own_redis: Any, count: RedisCount
) -> None:
    """N widget boots, then N page views of the visitors they made, each as a backlog
    the gateway drains; done when every message's delivered mark is in Redis (the
    gateway marks a message once handled and confirmed, then acknowledges it)."""
    sessions = VisitorSessions(own_redis, settings)
    visitor_queue = gateway._consumers[0]  # the visitor queue's consumer (gateway.start)
    visitors = [sessions.new_visitor_id() for _ in range(n)]

    async def drain(name: str, publishes: list[tuple[str, Any]], units: int) -> None:
        await visitor_queue.cancel()
        ids = [uuid.uuid4().hex for _ in publishes]
        messages = [(key, struct, message_id) for (key, struct), message_id in zip(publishes, ids, strict=True)]
        for start in range(0, len(messages), 50):
            await asyncio.gather(
                *(
                    bus.publish(topology.VISITOR, key, struct, message_id=message_id)
                    for key, struct, message_id in messages[start : start + 50]
                )
            )
        waiting = [settings.redis_key("gw", "sent", message_id) for message_id in ids]
        cpu, redis_before = time.process_time(), count.now()
        first = time.perf_counter()
        await visitor_queue.start()
        deadline = time.monotonic() + 120
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} {name} messages not handled after 120 s")
            await asyncio.sleep(0.05)
            # The 50 oldest still unmarked only: checking all (thousands) each time cost
            # this process, whose CPU is the figure, more than a page view does.
            async with own_redis.pipeline(transaction=False) as pipe:
                for key in waiting[:50]:
                    pipe.exists(key)
                found = await pipe.execute()
            waiting = [key for key, marked in zip(waiting[:50], found, strict=True) if not marked] + waiting[50:]
        elapsed = time.perf_counter() - first
        print(f"  gateway {name}, backlog: {units} in {elapsed:.2f} s, {units / elapsed:.0f}/s")
        cpu_ms = (time.process_time() - cpu) / units * 1000
        commands, round_trips = (now - before for now, before in zip(count.now(), redis_before, strict=True))
        print(
            f"  {'':<48} CPU {cpu_ms:.2f} ms/page view (whole process); gateway Redis "
            f"{commands / units:.1f} commands, {round_trips / units:.1f} round trips per page view"
        )

    def view(visitor_id: str, url: str) -> tuple[str, Any]:
        return f"{site_id}.pageview", codec.PageView(
            visitor_id=visitor_id, site_id=site_id, url=url, title="Bench", viewed_at_ms=int(time.time() * 1000)
        )

    boots: list[tuple[str, Any]] = []
    for visitor_id in visitors:
        await sessions.save(visitor_id, site_id, {"frontend_id": settings.frontend_id, "page_url": "https://b/"})
        arrived = codec.VisitorEvent(
            visitor_id=visitor_id, site_id=site_id, kind=codec.VisitorEventKind.ARRIVED, at_ms=int(time.time() * 1000)
        )
        boots += [(f"{site_id}.event", arrived), view(visitor_id, "https://b.example/")]
    await drain("widget boots (ARRIVED + PageView)", boots, n)
    await drain("returning page views", [view(v, "https://b.example/next") for v in visitors], n)


async def churn(
    settings: Settings, gateway: Gateway, op: OperatorClient, bus: Bus, site_id: str, seconds: float
) -> None:
    sessions = VisitorSessions(gateway.redis, settings)
    visitors = [sessions.new_visitor_id() for _ in range(100)]
    for visitor_id in visitors:
        await sessions.save(visitor_id, site_id, {"frontend_id": settings.frontend_id, "page_url": "https://b/"})
    bot = f"{site_id}@{settings.xmpp_component_domain}"
    followed = visitors[:20]
    for visitor_id in followed:
        await op.ask(bot, f"!follow {await gateway.desk.names.name_of(visitor_id)}")
    await asyncio.sleep(settings.gateway_presence_interval_ms / 1000 * 3)
    sent_at: list[float] = []
    gateway.desk.coalescer.on_sent = lambda operator, at: sent_at.append(at) if operator == op.jid else None
    started = time.monotonic()
    views = 0
    while time.monotonic() - started < seconds:
        batch = []
        for visitor_id in visitors:
            views += 1
            batch.append(
                bus.publish(
                    topology.VISITOR,
                    f"{site_id}.pageview",
                    codec.PageView(
                        visitor_id=visitor_id,
                        site_id=site_id,
                        url=f"https://b.example/{views}",
                        title="Churn",
                        viewed_at_ms=int(time.time() * 1000),
                    ),
                    message_id=uuid.uuid4().hex,
                )
            )
        await asyncio.gather(*batch)
    elapsed = time.monotonic() - started
    await asyncio.sleep(settings.gateway_presence_interval_ms / 1000 * 3)
    domain = "@" + settings.xmpp_component_domain
    stamps = [r.at for r in op.received if r.kind == "presence" and r.at >= started and r.sender.endswith(domain)]
    span = (stamps[-1] - started) if stamps else elapsed
    busiest = max((sum(1 for t in stamps[i:] if t - s < 1.0) for i, s in enumerate(stamps)), default=0)
    # Receive times carry delivery jitter; the gateway spaces its sends exactly.
    busiest_jitter = max((sum(1 for t in stamps[i:] if t - s < 0.95) for i, s in enumerate(stamps)), default=0)
    busiest_sent = max((sum(1 for t in sent_at[i:] if t - s < 1.0) for i, s in enumerate(sent_at)), default=0)
    naive = views * len(followed) / len(visitors)
    print(
        f"  churn: {views} page views in {elapsed:.1f} s ({views / elapsed:.0f}/s) across 100 visitors, "
        f"operator follows 20\n"
        f"    presence stanzas to the operator: {len(stamps)} over {span:.1f} s ({len(stamps) / span:.1f}/s); "
        f"busiest 1 s window as sent {busiest_sent}, as received {busiest} (0.95 s: {busiest_jitter}); ceiling "
        f"{settings.gateway_presence_ceiling_per_s}/s; without coalescing: {naive:.0f} ({naive / elapsed:.0f}/s)"
    )


@contextlib.contextmanager
def profiled(enabled: bool, name: str) -> Iterator[None]:
    """pyinstrument over a phase (wall clock, so time idle in epoll shows as such)."""
    if not enabled:
        yield
        return
    from pyinstrument import Profiler

    from bench.e2e_profile import where_time_goes

    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        session = profiler.stop()
        path = Path(tempfile.gettempdir()) / f"habla-bench-gateway-{name}.pyisession"
        session.save(str(path))
        print(f"  pyinstrument, {name}: session kept in {path}")
        for line in where_time_goes(path):
            print("  " + line)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--pageviews", type=int, default=1000, help="widget boots, then as many page views")
    parser.add_argument("--churn-seconds", type=float, default=10.0)
    parser.add_argument("--profile", action="store_true", help="pyinstrument profiles of the gateway phases")
    args = parser.parse_args()

    box = await asyncio.to_thread(sandbox.create, "bench-gateway", log_level="WARNING")
    cfg = sandbox.prosody_config(box.settings)
    settings = sandbox.with_prosody_ports(box.settings, cfg)
    engine = db.engine(settings)
    process = prosody.start(cfg)
    redis = state.connect(settings)
    bus = await Bus.connect(settings, "bench")
    await bus.declare_topology()
    gateway: Gateway | None = None
    try:
        op = await connect_operator(cfg, settings, "benchop")
        print(f"im_gateway benchmark: {args.messages} messages each way, Prosody 0.12 on loopback, one process")
        rows = await baseline(settings, op, args.messages)
        site_id = await create_site(engine, [(op.jid, "Bench")])
        gateway = Gateway(settings, await Bus.connect(settings, "bench-gateway"), state.connect(settings), engine)
        await gateway.start()
        count = RedisCount(gateway)
        status = SiteStatusReader(redis, settings)
        deadline = time.monotonic() + 20
        while not (await status.get(site_id)).online:
            if time.monotonic() > deadline:
                raise TimeoutError("site never came online")
            await asyncio.sleep(0.05)
        base_in, base_out = rows[0], rows[1]
        for conversations in (1, 10):
            with profiled(args.profile, f"{conversations}conv"):
                gw = await through_gateway(
                    settings, gateway, op, bus, site_id, args.messages, conversations, redis, count
                )
            gw_in, gw_backlog, gw_out = gw[0], gw[1], gw[2]
            print(
                f"  ratio to baseline ({conversations} conv.): visitor -> operator "
                f"{gw_in['rate'] / base_out['rate']:.2f}, backlog {gw_backlog['rate'] / base_out['rate']:.2f} "
                f"(vs component -> client), operator -> visitor "
                f"{gw_out['rate'] / base_in['rate']:.2f} (vs client -> component)"
            )
        with profiled(args.profile, "pageviews"):
            await page_views(settings, gateway, bus, site_id, args.pageviews, redis, count)
        await churn(settings, gateway, op, bus, site_id, args.churn_seconds)
        await op.stop()
    finally:
        if gateway is not None:
            await gateway.stop()
            await gateway.bus.close()
            await gateway.redis.aclose()
        await bus.close()
        await redis.aclose()
        prosody.stop(process)
        shutil.rmtree(cfg.dir, ignore_errors=True)
        engine.dispose()
        await asyncio.to_thread(sandbox.remove, box)


if __name__ == "__main__":
    asyncio.run(main())
