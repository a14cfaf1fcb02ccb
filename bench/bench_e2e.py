"""Habla end to end: from the widget to the operator's XMPP client and back, and page views.

Starts the whole suite as `make run` does (tests/devstack/stack.py), isolated: its own
RabbitMQ vhost, Redis prefix, MariaDB database, state folder, and Prosody and services
on free ports, all removed afterwards. Then:

* V visitors on the real frontend's WebSockets and O operators on real XMPP client
  connections (slixmpp, strict: no automatic authorizations or subscriptions);
* lines/s each way saturated; latency p50/p99 each way at paced rates;
* widget boots/s (POST /session: session + page view) and returning page views/s
  (the same with the visitor's token), with latency, from ``--connections`` at once;
* CPU seconds per 1 M chat lines and per 1 M page views of every process of the suite
  (RabbitMQ, Redis, MariaDB and Prosody included), from /proc before and after each phase;
* each figure's ratio to its physical baseline, measured in the same run: bare confirmed
  publishes (aio-pika), a bare slixmpp component, bare Tornado answering the same route,
  and nginx serving the same bytes (if installed).

    .venv/bin/python bench/bench_e2e.py                    # about 2-3 minutes
    .venv/bin/python bench/bench_e2e.py --visitors 100 --lines 50 --http-seconds 20
    .venv/bin/python bench/bench_e2e.py --profile 10       # + pyinstrument profiles of the frontend
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tornado.httpclient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import e2e_baselines, e2e_chat, e2e_http, e2e_procs, e2e_redis  # noqa: E402
from bench.e2e_report import Report  # noqa: E402
from libs.common import db, sitedir  # noqa: E402
from libs.common.db import site_store  # noqa: E402
from libs.common.settings import Settings  # noqa: E402
from tests.devstack.stack import running_stack  # noqa: E402
from tools import prosody, sandbox  # noqa: E402
from tools.prosody import free_port  # noqa: E402

# A bench sends from one IP and a few visitors as fast as it can: the limits that
# protect a real deployment from that would be all it measures.
UNLIMITED = 1_000_000_000
# No chat of the bench goes unanswered for this long (see stack_settings).
ANSWER_TIMEOUT_S = 3600
# Each unit of work repeated under Redis MONITOR; the figure is the mean.
REDIS_COUNT_TIMES = 20
# How long the suite's CPU is sampled with no load of ours (subtracted from each phase).
IDLE_S = 3.0
# Returning page views/s the default --tokens leave room for without any visitor going
# over HABLA_VISITOR_PAGEVIEWS_PER_MIN (bare Tornado's rate on this machine): 100
# tokens at 30 a minute were refused (429) after 3,000 views, and wrk counted refusals.
VIEWS_PER_S_ROOM = 6_000


def tokens_needed(settings: Settings, seconds: float) -> int:
    """Returning visitors to cycle through so that none is over its page-view limit:
    each already counted its boot, and the first REDIS_COUNT_TIMES views more."""
    per_token = settings.visitor_pageviews_per_min - 1 - REDIS_COUNT_TIMES - 1
    window_s = min(seconds, 60.0)  # the limit's window is a fixed minute
    return max(1, -(-round(VIEWS_PER_S_ROOM * window_s) // max(1, per_token)))


def stack_settings(box: sandbox.Sandbox, state_dir: Path, log_level: str) -> Settings:
    """The sandbox's names plus free ports and a state folder of its own, as the dev-stack
    tests do (tests/devstack/conftest.py)."""
    ports: dict[str, Any] = {f.name: free_port() for f in dataclasses.fields(Settings) if f.name.endswith("_port")}
    return dataclasses.replace(
        box.settings,
        state_dir=str(state_dir),
        secret_key=Settings.from_env({}).secret_key,  # make run generates its own
        public_url=f"http://127.0.0.1:{ports['frontend_port']}",
        status_public_url=f"http://127.0.0.1:{ports['status_port']}",
        console_public_url=f"http://127.0.0.1:{ports['console_port']}",
        visitor_messages_per_min=UNLIMITED,
        ip_requests_per_min=UNLIMITED,
        # The operators answer when a phase has them write (operator -> visitor), a minute
        # or more after the chats were paired (the returning visitors' boots, the Redis
        # counts): at the default 60 s the gateway marked them away and moved every chat to
        # the other operator, whose lines it then refused ("X is handling this chat"), and
        # the bench timed out waiting for them at the visitors.
        gateway_answer_timeout_s=ANSWER_TIMEOUT_S,
        log_level=log_level,
        **ports,
    )


async def operators_for(settings: Settings, demo: dict[str, str], n: int) -> list[e2e_chat.StrictOperator]:
    """The demo operator and n - 1 more, each with a Prosody account, added to the demo site
    as `habla operator add` does (so the gateway updates their rosters)."""
    site_id = demo["HABLA_DEMO_SITE_ID"]
    logins = [(demo["HABLA_DEMO_OPERATOR_JID"], demo["HABLA_DEMO_OPERATOR_PASSWORD"])]
    cfg = prosody.ProsodyConfig(dir=Path(settings.state_dir) / "prosody", domain=settings.xmpp_domain)
    engine = db.engine(settings)
    try:
        for i in range(1, n):
            user, password = f"benchop{i}", f"bench-{os.urandom(6).hex()}"
            await asyncio.to_thread(prosody.register, cfg, user, password)
            jid = f"{user}@{settings.xmpp_domain}"
            with engine.begin() as conn:
                site_store.add_operator(conn, site_id, jid, f"Bench operator {i}")
            logins.append((jid, password))
    finally:
        engine.dispose()
    if n > 1:
        await asyncio.to_thread(sitedir.invalidate_sync, settings, site_id)
    port = int(demo["HABLA_DEMO_XMPP_PORT"])
    bot = (f"{site_id}@{settings.xmpp_component_domain}",)
    clients = [e2e_chat.StrictOperator(jid, password, "127.0.0.1", port, accept=bot) for jid, password in logins]
    return list(await asyncio.gather(*(client.start() for client in clients)))


async def wait_online(api: str, operators: list[e2e_chat.StrictOperator]) -> None:
    client = tornado.httpclient.AsyncHTTPClient()

    async def available() -> int:
        body = (await client.fetch(f"{api}/status")).body
        return int(json.loads(body).get("operators_available", 0))

    deadline = time.monotonic() + 30
    while (found := await available()) < len(operators):
        if time.monotonic() > deadline:
            seen = "; ".join(f"{op.jid} got {op.received[-4:]}" for op in operators)
            raise TimeoutError(f"{found} of {len(operators)} operators available after 30 s: {seen}")
        await asyncio.sleep(0.2)


async def redis_commands(
    settings: Settings, url: str, returning: str, visitor: e2e_chat.Visitor, pids: dict[str, int]
) -> dict[str, str]:
    """Redis commands per unit of work (MONITOR, outside the measured phases)."""
    client = tornado.httpclient.AsyncHTTPClient()
    operator = visitor.operator
    assert operator is not None
    counter = iter(range(1_000_000))

    async def boot() -> None:
        await client.fetch(url, method="POST", body=e2e_http.BOOT_BODY)

    async def view() -> None:
        await client.fetch(url, method="POST", body=returning)

    async def line_in() -> None:
        body = f"redis count {next(counter)}"
        await visitor.say(body)
        await e2e_chat.wait_until(lambda: body in operator.arrived, 30, "the line at the operator")

    async def line_out() -> None:
        body = f"redis count {next(counter)}"
        operator.say(visitor.jid, body)
        await e2e_chat.wait_until(lambda: body in visitor.arrived, 30, "the line at the visitor")

    found = {}
    for name, action in (
        ("widget boot", boot),
        ("returning page view", view),
        ("visitor -> operator line", line_in),
        ("operator -> visitor line", line_out),
    ):
        found[name] = e2e_redis.describe(await e2e_redis.commands_per(settings, action, REDIS_COUNT_TIMES, pids))
    return found


PHASES = ("saturated", "paced", "http", "redis", "baselines")


def want(args: argparse.Namespace, *phases: str) -> bool:
    """Whether any of ``phases`` is to run (--phases)."""
    return any(phase in args.phases for phase in phases)


async def run(args: argparse.Namespace, settings: Settings, demo: dict[str, str], report: Report) -> None:
    site_id = demo["HABLA_DEMO_SITE_ID"]
    api = f"{settings.public_url}/api/sites/{site_id}"
    suite = e2e_procs.Suite.find(e2e_procs.devstack_pid(), Path(settings.state_dir) / "prosody" / "prosody.pid")
    report.processes(sorted(suite.pids))

    operators = await operators_for(settings, demo, args.operators)
    visitors: list[e2e_chat.Visitor] = []
    try:
        await wait_online(api, operators)
        visitors = await e2e_chat.new_visitors(api, args.visitors)
        ws_url = api.replace("http", "ws", 1) + "/ws"
        for v in visitors:
            await v.connect(ws_url)
        await e2e_chat.pair(visitors, operators, 60)
        url = f"{api}/session"
        tokens = args.tokens or tokens_needed(settings, args.http_seconds)
        returning = await e2e_chat.new_visitors(api, tokens) if want(args, "http", "redis") else []
        bodies = [e2e_http.returning_body(v.token) for v in returning]
        if want(args, "redis"):
            report.redis_commands(await redis_commands(settings, url, bodies[0], visitors[0], suite.pids))
        await suite.measure_idle(IDLE_S)
        report.idle(suite.idle)
        # The client's own full collections (its set-up: 40 sockets, 2 XMPP clients)
        # paused it 130-600 ms in a traced run: delays in the figures that are not the suite's.
        gc.collect()
        gc.freeze()

        if want(args, "saturated"):
            before = suite.snapshot()
            to_operator = await e2e_chat.visitors_saturated(visitors, operators, args.lines)
            report.phase("visitor -> operator", "chat lines", to_operator.count, suite.since(before))
            before = suite.snapshot()
            to_visitor = await e2e_chat.operators_saturated(visitors, len(visitors) * args.lines)
            report.phase("operator -> visitor", "chat lines", to_visitor.count, suite.since(before))
            report.saturated(to_operator, to_visitor)

        if want(args, "paced"):
            for rate in args.rates:
                report.paced(rate, await e2e_chat.paced(visitors, operators, rate, args.paced_seconds))

        if want(args, "http"):
            # Page views: boots (no token) and returning views (the tokens made above).
            before = suite.snapshot()
            boots = await e2e_http.load(url, [e2e_http.BOOT_BODY], args.connections, args.http_seconds)
            report.phase("widget boots", "page views", boots.requests, suite.since(before))
            before = suite.snapshot()
            views = await e2e_http.load(url, bodies, args.connections, args.http_seconds)
            report.phase("returning views", "page views", views.requests, suite.since(before))
            report.page_views(boots, views, args.connections, e2e_http.load_tool())
    finally:
        for v in visitors:
            v.close()
        for op in operators:
            await op.stop()

    # Baselines, after the suite's figures (so they do not share the phases' CPU).
    if not want(args, "baselines"):
        return
    if want(args, "saturated"):
        report.publishes(await e2e_baselines.bare_publishes(settings, len(visitors), args.lines), len(visitors))
    if want(args, "saturated", "paced"):
        rates = args.rates if want(args, "paced") else []
        report.component(
            await e2e_baselines.bare_component(settings, len(visitors) * args.lines, rates, args.paced_seconds)
        )
    if want(args, "http"):
        answer = await e2e_http.session_answer(url)
        with e2e_http.baselines(site_id, answer) as bare:
            loads: dict[str, e2e_http.Load] = {}
            for name, bare_url in (("bare tornado", bare.tornado_url), ("nginx", bare.nginx_url)):
                if bare_url is None:
                    continue
                cpu_before = e2e_procs.tree_cpu_seconds(bare.pids[name])
                loads[name] = await e2e_http.load(bare_url, [e2e_http.BOOT_BODY], args.connections, args.http_seconds)
                cpu = e2e_procs.tree_cpu_seconds(bare.pids[name]) - cpu_before
                loads[name].cpu_us = cpu / max(1, loads[name].requests) * 1e6
            tornado_load, nginx_load = loads["bare tornado"], loads.get("nginx")
            report.http_baselines(tornado_load, nginx_load, len(answer))

    if args.profile:
        from bench import e2e_profile

        report.profile(await e2e_profile.widget_boots(settings, site_id, args.connections, args.profile))
        report.profile(await e2e_profile.visitor_lines(settings, site_id, len(visitors), args.profile))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=40, help="visitors on WebSockets (default 40)")
    parser.add_argument("--operators", type=int, default=2, help="operators on XMPP connections (default 2)")
    parser.add_argument("--lines", type=int, default=25, help="lines per visitor when saturated (default 25)")
    parser.add_argument(
        "--rates", type=lambda s: [float(r) for r in s.split(",")], default=[20.0, 100.0], help="paced lines/s each way"
    )
    parser.add_argument("--paced-seconds", type=float, default=5.0, help="duration of each paced rate")
    parser.add_argument("--http-seconds", type=float, default=5.0, help="duration of each page-view load")
    parser.add_argument("--connections", type=int, default=20, help="page-view requests at once (default 20)")
    parser.add_argument(
        "--tokens",
        type=int,
        default=0,
        help="returning visitors cycled through (default: enough that none goes over its page-view limit)",
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="profile the frontend under widget boots and visitor lines too",
    )
    parser.add_argument(
        "--phases",
        type=lambda s: [p for p in s.split(",") if p],
        default=list(PHASES),
        help=f"which of {','.join(PHASES)} to run (default all); e.g. paced,baselines for the latency "
        "figures alone (a minute)",
    )
    parser.add_argument("--log-level", default="WARNING", help="the services' HABLA_LOG_LEVEL (default WARNING)")
    parser.add_argument("--bare-tornado", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}; choose from {','.join(PHASES)}")
    if args.bare_tornado:
        e2e_http.serve_bare_tornado(int(args.bare_tornado[0]), Path(args.bare_tornado[1]))
        return 0

    report = Report(args, datetime.datetime.now(datetime.UTC))
    report.header()
    box = sandbox.create("bench-e2e", migrate=False)  # the stack migrates its database itself
    state_dir = Path(tempfile.mkdtemp(prefix="habla-bench-e2e-state-"))
    try:
        settings = stack_settings(box, state_dir, args.log_level)
        started = time.monotonic()
        with running_stack(settings) as stack:
            report.started(time.monotonic() - started)
            asyncio.run(run(args, settings, stack.demo, report))
    finally:
        sandbox.remove(box)
        shutil.rmtree(state_dir, ignore_errors=True)
    report.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
