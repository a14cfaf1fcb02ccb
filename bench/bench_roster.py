"""Roster pushes per operator per second under visitor churn (XEP-0356 on Prosody).

Run: .venv/bin/python bench/bench_roster.py [--seconds 10] [--arrivals-per-s 50] [--operators 3]

One process and event loop; Prosody (with mod_privilege), RabbitMQ, Redis and MariaDB
are the real local servers, in an isolated vhost, Redis prefix, database and Prosody
removed at the end. A site with a few operators gets a steady stream of visitors who
arrive (session + page view), some start chatting, and leave (LEFT) a few seconds
later. Counted per operator: roster writes the gateway started (its hook) and roster
pushes the operator's client received, as the busiest one-second window and the mean,
against the ceiling (HABLA_ROSTER_PUSHES_PER_S) and against what a write per change
would have cost.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import shutil
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common import codec, db, state, topology
from libs.common.messaging import Bus
from libs.common.state.presence import SiteStatusReader
from libs.common.state.sessions import VisitorSessions
from services.im_gateway.gateway import Gateway
from tests.im_gateway.conftest import connect_operator, create_site
from tests.im_gateway.operator_client import OperatorClient
from tools import prosody, sandbox

# How long a churned visit lasts, and the share of visitors who start a chat.
VISIT_S = (2.0, 6.0)
CHATTING = 0.1


def busiest(stamps: list[float]) -> int:
    stamps = sorted(stamps)
    return max((sum(1 for t in stamps[i:] if t - s < 1.0) for i, s in enumerate(stamps)), default=0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--arrivals-per-s", type=float, default=50.0)
    parser.add_argument("--operators", type=int, default=3)
    args = parser.parse_args()

    box = await asyncio.to_thread(sandbox.create, "bench-roster", log_level="WARNING")
    cfg = sandbox.prosody_config(box.settings)
    settings = dataclasses.replace(sandbox.with_prosody_ports(box.settings, cfg), gateway_presence_interval_ms=500)
    engine = db.engine(settings)
    process = prosody.start(cfg)
    redis = state.connect(settings)
    bus = await Bus.connect(settings, "bench")
    await bus.declare_topology()
    gateway: Gateway | None = None
    operators: list[OperatorClient] = []
    try:
        operators = [await connect_operator(cfg, settings, f"rosterop{i}") for i in range(args.operators)]
        site_id = await create_site(engine, [(op.jid, f"Op {i}") for i, op in enumerate(operators)])
        gateway = Gateway(settings, await Bus.connect(settings, "bench-gateway"), redis, engine)
        await gateway.start()
        status = SiteStatusReader(redis, settings)
        deadline = time.monotonic() + 20
        while not (await status.get(site_id)).online:
            if time.monotonic() > deadline:
                raise TimeoutError("site never came online")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the bot's push is not part of the churn

        started_at: dict[str, list[float]] = defaultdict(list)
        received_at: dict[str, list[float]] = defaultdict(list)
        gateway.rosters.pushes.on_push = lambda operator, at: started_at[operator].append(at)
        for op in operators:
            op.xmpp.add_event_handler(
                "roster_update", lambda _iq, jid=op.jid: received_at[jid].append(time.monotonic())
            )
        sessions = VisitorSessions(redis, settings)
        rng = random.Random(7)
        arrivals = 0
        leaving: list[asyncio.Task[None]] = []

        async def visit(visitor_id: str) -> None:
            await asyncio.sleep(rng.uniform(*VISIT_S))
            await sessions.forget(visitor_id)
            await bus.publish(
                topology.VISITOR,
                f"{site_id}.event",
                codec.VisitorEvent(
                    visitor_id=visitor_id, site_id=site_id, kind=codec.VisitorEventKind.LEFT,
                    at_ms=int(time.time() * 1000),
                ),
                message_id=uuid.uuid4().hex,
            )  # fmt: skip

        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            visitor_id = sessions.new_visitor_id()
            fields: dict[str, str | int] = {"frontend_id": settings.frontend_id, "page_url": "https://b.example/"}
            conversation_id = uuid.uuid4().hex if rng.random() < CHATTING else ""
            if conversation_id:
                fields["conversation_id"] = conversation_id
            await sessions.save(visitor_id, site_id, fields)
            view = codec.PageView(
                visitor_id=visitor_id, site_id=site_id, url="https://b.example/", title="Churn",
                viewed_at_ms=int(time.time() * 1000),
            )  # fmt: skip
            await bus.publish(topology.VISITOR, f"{site_id}.pageview", view, message_id=uuid.uuid4().hex)
            if conversation_id:
                line = codec.ChatMessage(
                    message_id=uuid.uuid4().hex, conversation_id=conversation_id, site_id=site_id,
                    visitor_id=visitor_id, sender=codec.SenderKind.VISITOR, body="hi",
                    sent_at_ms=int(time.time() * 1000), seq=1,
                )  # fmt: skip
                await bus.publish(topology.VISITOR, f"{site_id}.message", line)
            arrivals += 1
            leaving.append(asyncio.create_task(visit(visitor_id)))
            await asyncio.sleep(1 / args.arrivals_per_s)
        churn_s = time.monotonic() - started
        await asyncio.gather(*leaving)
        await asyncio.sleep(3.0)  # let the last removals drain
        ceiling = settings.gateway_roster_pushes_per_s
        print(
            f"roster churn: {arrivals} visits in {churn_s:.1f} s ({arrivals / churn_s:.0f} arrivals/s, "
            f"{VISIT_S[0]:.0f}-{VISIT_S[1]:.0f} s each, {CHATTING:.0%} chatting), {args.operators} operators, "
            f"cap {settings.gateway_roster_cap} visitors per roster, ceiling {ceiling} pushes/s per operator"
        )
        naive = 2 * arrivals  # one write in and one out per visitor, per operator, without cap or coalescing
        for op in operators:
            sent, got = started_at[op.jid], received_at[op.jid]
            span = (max(got) - started) if got else churn_s
            print(
                f"  {op.jid}: {len(sent)} writes, {len(got)} pushes received over {span:.1f} s "
                f"({len(got) / span:.1f}/s); busiest second {busiest(sent)} sent, {busiest(got)} received; "
                f"a write per change: {naive} ({naive / churn_s:.0f}/s)"
            )
            bot = f"{site_id}@{settings.xmpp_component_domain}"
            roster = [j for j in op.xmpp.client_roster if op.roster_item(j) and j != bot]
            print(f"    visitors left in the roster after every visit ended: {len(roster)}")
    finally:
        for op in operators:
            await op.stop()
        if gateway is not None:
            await gateway.stop()
            await gateway.bus.close()
        await bus.close()
        await redis.aclose()
        prosody.stop(process)
        shutil.rmtree(cfg.dir, ignore_errors=True)
        engine.dispose()
        await asyncio.to_thread(sandbox.remove, box)


if __name__ == "__main__":
    asyncio.run(main())
