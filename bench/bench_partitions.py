"""Gateway partitions: chat lines/s and page views/s with 1, 2, 4 and 8 partitions owned
by 1 and 2 gateway processes, how the work spreads between the processes, and failover.

Run: .venv/bin/python bench/bench_partitions.py [--lines 2000] [--pageviews 2000]
     [--sites-per-partition 2] [--layouts 1x1,2x1,2x2,4x1,4x2,8x2] [--no-failover]
     (layouts: partitions x processes)

Each layout gets its own vhost, Redis prefix, database and Prosody (which knows every
partition domain), removed at the end. Sites (one operator each) are created until each
partition has its share; the gateways are real subprocesses (`python -m
services.im_gateway`). All lines are published at once, spread over the sites (4
visitors each), and the clock stops when every operator has all of theirs. Each
process's share is read from its own /metrics (lines it relayed, partitions it owns at
the end: with rebalancing, P/2 each). On 2 cores shared with RabbitMQ, Redis, MariaDB and
Prosody the point is that the work spreads and nothing collapses, not a linear speed-up.

Page views: once the lines are in (and, with 2 processes, the shares even), the page
views are published at once (as the frontend does: habla.visitor, <site>.pageview),
spread over the visitors, while the gateways run; the clock stops when the gateways
have acknowledged all of them (habla_amqp_consumed_total of the partitions' visitor
queues, outcome "ack", summed over the processes' /metrics).

Failover (layouts with 2 processes, unless --no-failover): one process is SIGKILLed;
printed are the seconds until the survivor owns every partition (its
habla_gateway_partitions_owned) and until a line sent at the kill to every site's
partition has reached its operator (a moved partition serves again).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import signal
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common import codec, db, partitions, state, topology
from libs.common.messaging import Bus
from libs.common.state.presence import SiteStatusReader
from services.im_gateway.bindings import SiteBindings
from services.im_gateway.serving import for_domain
from tests.im_gateway.conftest import create_site
from tests.im_gateway.isolated import Isolated
from tests.im_gateway.operator_client import OperatorClient
from tests.im_gateway.test_two_domains import Chat
from tools import prosody, sandbox

LAYOUTS = ((1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (8, 2))  # (partitions, processes)
VISITORS_PER_SITE = 4
LOG_DIR = Path(__file__).resolve().parents[1] / "tests" / "artifacts" / "bench-partitions"


async def wait_for(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(what)


async def layout(
    p: int, processes: int, lines: int, pageviews: int, per_partition: int, log_dir: Path, failover: bool
) -> str:
    box = await asyncio.to_thread(sandbox.create, f"bench-part{p}x{processes}", log_level="WARNING")
    base = dataclasses.replace(box.settings, gateway_partitions=p, presence_heartbeat_s=1, presence_ttl_s=10)
    cfg = sandbox.prosody_config(base)
    settings = sandbox.with_prosody_ports(base, cfg)
    engine = db.engine(settings)
    server = prosody.start(cfg)
    redis = state.connect(settings)
    bus = await Bus.connect(settings, "bench")
    await bus.declare_topology()
    gateways = []
    metrics_ports: list[int] = []
    ops: list[OperatorClient] = []
    try:
        by_partition: dict[int, list[tuple[str, OperatorClient]]] = {n: [] for n in range(p)}
        for _ in range(per_partition * p * 20):
            if all(len(v) >= per_partition for v in by_partition.values()):
                break
            user, password = f"op-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:12]
            await asyncio.to_thread(prosody.register, cfg, user, password)
            jid = f"{user}@{settings.xmpp_domain}"
            site_id = await create_site(engine, [(jid, "Op")])
            n = partitions.partition_of(site_id, p)
            if len(by_partition[n]) < per_partition:
                op = await OperatorClient(jid, password, "127.0.0.1", settings.xmpp_c2s_port).start()
                ops.append(op)
                by_partition[n].append((site_id, op))
        sites = [site for group in by_partition.values() for site in group]
        # The partitions' queues, bound as the gateways bind them, so the whole backlog
        # can wait there before any gateway starts: the figure is the gateways' drain
        # rate, not this script's publishing rate.
        for domain in partitions.all_domains(settings):
            bindings = SiteBindings(bus, engine, for_domain(settings, domain))
            await bindings.declare()
            await bindings.resync()
        chats = [(Chat(settings, redis, bus, site_id), op) for site_id, op in sites for _ in range(VISITORS_PER_SITE)]
        for chat, _ in chats:
            await chat.open()
        tag = uuid.uuid4().hex[:6]
        expected: dict[OperatorClient, int] = {}
        plan = [(chats[i % len(chats)], f"{tag} {i}") for i in range(lines)]
        for (_, op), _ in plan:
            expected[op] = expected.get(op, 0) + 1

        def arrived(op: OperatorClient) -> int:
            return sum(1 for r in op.received if r.kind == "message" and r.body.startswith(tag + " "))

        # Concurrently per visitor, in order within each visitor (as the frontend does).
        per_visitor: dict[int, list[str]] = {}
        for (chat, _), body in plan:
            per_visitor.setdefault(id(chat), []).append(body)
        by_id = {id(chat): chat for chat, _ in chats}

        async def send(chat_id: int) -> None:
            for body in per_visitor[chat_id]:
                await by_id[chat_id].say(body)

        await asyncio.gather(*(send(chat_id) for chat_id in per_visitor))
        started = time.monotonic()
        for k in range(processes):
            metrics_ports.append(prosody.free_port())
            env = Isolated(dataclasses.replace(settings, gateway_metrics_port=metrics_ports[-1]), cfg, log_dir, server)
            gateways.append(env.start_gateway(f"bench-p{p}-x{processes}-{k}"))
        status = SiteStatusReader(redis, settings)
        for site_id, _ in sites:
            await wait_for(lambda site_id=site_id: _online(status, site_id), 180, f"site {site_id} online")
        await wait_for(lambda: all(arrived(op) >= n for op, n in expected.items()), 300, "all lines arrived")
        times = sorted(r.at for op in ops for r in op.received if r.kind == "message" and r.body.startswith(tag + " "))
        span = times[-1] - times[0]
        if processes > 1:
            # Rebalancing evens the shares once every partition is owned (a few seconds).
            await wait_for(lambda: _shares_fair(metrics_ports, p), 60, "fair shares")
        shares = [
            (_metric(port, "habla_gateway_visitor_lines_total", 'outcome="relayed"'), _metric(port, OWNED))
            for port in metrics_ports
        ]
        spread = ", ".join(f"{int(relayed)} lines / {int(owned)} partitions" for relayed, owned in shares)
        report = (
            f"P={p} processes={processes}: a backlog of {lines} lines drained to {len(sites)} operators in "
            f"{span:.2f} s (first to last arrival) = {lines / span:.0f} lines/s; start to last line "
            f"{times[-1] - started:.1f} s; per process (relayed / owned at the end): {spread}"
        )
        if pageviews:
            report += "\n    " + await _page_views(bus, chats, pageviews, metrics_ports)
        if failover and processes > 1:
            report += "\n    " + await _failover(gateways[0], metrics_ports[1:], p, chats, tag, settings)
        return report
    finally:
        for process in gateways:
            Isolated.terminate(process)
        for op in ops:
            await op.stop()
        await bus.close()
        await redis.aclose()
        prosody.stop(server)
        shutil.rmtree(cfg.dir, ignore_errors=True)
        engine.dispose()
        await asyncio.to_thread(sandbox.remove, box)


OWNED = "habla_gateway_partitions_owned"
ACKED = "habla_amqp_consumed_total"


def _acked_visitor(ports: list[int]) -> float:
    """Messages the processes acknowledged from the partitions' visitor queues."""
    return sum(_metric(port, ACKED, 'outcome="ack"', '.visitor"}') for port in ports)


async def _page_views(bus: Bus, chats: list[tuple[Chat, OperatorClient]], n: int, ports: list[int]) -> str:
    """N page views published at once over the visitors; the clock stops when the
    gateways have acknowledged them all."""
    before = _acked_visitor(ports)
    started = time.monotonic()
    batch = 200
    for first in range(0, n, batch):
        await asyncio.gather(
            *(
                bus.publish(
                    topology.VISITOR,
                    f"{chats[i % len(chats)][0].site_id}.pageview",
                    codec.PageView(
                        visitor_id=chats[i % len(chats)][0].visitor_id,
                        site_id=chats[i % len(chats)][0].site_id,
                        url=f"https://shop.example/{i}",
                        title=f"Page {i}",
                        viewed_at_ms=int(time.time() * 1000),
                        conversation_id=chats[i % len(chats)][0].conversation_id,
                    ),
                    message_id=uuid.uuid4().hex,
                )
                for i in range(first, min(n, first + batch))
            )
        )
    published = time.monotonic() - started
    await wait_for(lambda: _acked_visitor(ports) - before >= n, 300, "all page views acknowledged")
    elapsed = time.monotonic() - started
    per_process = ", ".join(str(int(_acked_visitor([port]))) for port in ports)
    return (
        f"page views: {n} published in {published:.2f} s, all acknowledged after {elapsed:.2f} s = "
        f"{n / elapsed:.0f} page views/s (visitor-queue acks per process, lines included: {per_process})"
    )


async def _failover(
    victim: Any, survivors: list[int], p: int, chats: list[tuple[Chat, OperatorClient]], tag: str, settings: Any
) -> str:
    """SIGKILL one process; seconds until the survivors own every partition and until a
    line sent at the kill to each site has reached its operator."""
    one_per_site: dict[str, tuple[Chat, OperatorClient]] = {}
    for chat, op in chats:
        one_per_site.setdefault(chat.site_id, (chat, op))
    probe = f"{tag}-failover"
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.to_thread(victim.wait, 10)
    for chat, _ in one_per_site.values():
        await chat.say(f"{probe} {chat.site_id}")
    owned_at: float | None = None
    arrived_at: float | None = None
    deadline = killed + 180
    while time.monotonic() < deadline and (owned_at is None or arrived_at is None):
        now = time.monotonic()
        if owned_at is None and sum(int(_metric(port, OWNED)) for port in survivors) == p:
            owned_at = now - killed
        if arrived_at is None and all(
            any(r.kind == "message" and r.body == f"{probe} {chat.site_id}" for r in op.received)
            for chat, op in one_per_site.values()
        ):
            arrived_at = (
                max(
                    r.at
                    for chat, op in one_per_site.values()
                    for r in op.received
                    if r.body == f"{probe} {chat.site_id}"
                )
                - killed
            )
        await asyncio.sleep(0.05)
    owned = f"{owned_at:.1f} s" if owned_at is not None else "not within 180 s"
    arrived = f"{arrived_at:.1f} s" if arrived_at is not None else "not within 180 s"
    return (
        f"failover (SIGKILL of one of 2 processes, lease TTL {settings.gateway_lease_ttl_s} s): survivor owns "
        f"all {p} partitions after {owned}; a line to each of the {len(one_per_site)} sites reached its operator "
        f"after {arrived}"
    )


def _metric(port: int, name: str, *labels: str) -> float:
    """A metric's value from a process's /metrics (summed over matching label sets)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
            text = answer.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {" and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _shares_fair(ports: list[int], p: int) -> bool:
    owned = [int(_metric(port, OWNED)) for port in ports]
    return sum(owned) == p and max(owned) - min(owned) <= 1


async def _online(status: SiteStatusReader, site_id: str) -> bool:
    return (await status.get(site_id)).online


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--pageviews", type=int, default=2000, help="page views per layout (0: none)")
    parser.add_argument("--sites-per-partition", type=int, default=2)
    parser.add_argument("--layouts", default=",".join(f"{p}x{n}" for p, n in LAYOUTS), help="partitions x processes")
    parser.add_argument("--no-failover", action="store_true", help="skip killing a process (2-process layouts)")
    args = parser.parse_args()
    layouts = [tuple(int(x) for x in item.split("x")) for item in args.layouts.split(",")]
    log_dir = LOG_DIR
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    print(
        f"gateway partitions: {args.lines} visitor lines and {args.pageviews} page views per layout, "
        f"{VISITORS_PER_SITE} visitors per site; load {os.getloadavg()[0]:.1f}"
    )
    for p, processes in layouts:
        report = await layout(
            p, processes, args.lines, args.pageviews, args.sites_per_partition, log_dir, not args.no_failover
        )
        print(" ", report, flush=True)
    print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    asyncio.run(main())
