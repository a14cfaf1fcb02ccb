"""Idle visitors on one rpc_frontend process: memory per WebSocket and the CPU of
heartbeats, at 10,000 connections.

A page with the widget on it keeps a WebSocket open for as long as the visitor stays,
mostly saying nothing: what an idle connection costs decides how many visitors one
frontend process holds. This starts one real frontend (`python -m
services.rpc_frontend`) in a subprocess, isolated like the other benchmarks (its own
RabbitMQ vhost, Redis prefix and MariaDB database, removed afterwards), gives it N
visitor sessions (written to Redis as the session endpoint writes them: a widget boot
per visitor would take minutes here and is measured by bench_e2e), then opens N
WebSockets to it from this process, each waiting for "synced" as the widget does.

Measured on the frontend process only, from /proc (the clients' memory and CPU are
this process's, reported apart):
* RSS per connection: (RSS with N open - RSS before) / N, after 200 connections were
  opened and closed to warm the process up;
* heartbeat CPU: the frontend's CPU over an idle window while every client sends the
  widget's application ping ({"type": "ping"} every 25 s, answered "pong") and the
  server sends its protocol pings (every 45 s, answered by the client's WebSocket
  library), less the frontend's own idle rate measured before any connection opened.

Usage: .venv/bin/python bench/bench_idle_ws.py [--connections 10000] [--idle-seconds 50]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import tornado.httpclient
import tornado.websocket

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e_procs import cpu_seconds  # noqa: E402
from libs.common import db, state  # noqa: E402
from libs.common.db import site_store  # noqa: E402
from libs.common.settings import Settings  # noqa: E402
from libs.common.state.sessions import VisitorSessions  # noqa: E402
from services.rpc_frontend.handlers.receive import PING_INTERVAL_S  # noqa: E402
from tools import sandbox  # noqa: E402
from tools.prosody import free_port  # noqa: E402

# The widget's application ping (services/rpc_frontend/static/widget.js PING_MS).
WIDGET_PING_S = 25.0
# Connections being opened at once: enough to keep the frontend busy, few enough
# that none waits long for its turn (the frontend's accept backlog is 128).
OPENING_AT_ONCE = 50
WARM_UP = 200
OPEN_TIMEOUT_S = 120.0
TARGET_KIB = 20


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Client:
    """One visitor's WebSocket, read by callback (no task per connection)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: tornado.websocket.WebSocketClientConnection | None = None
        self.synced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pongs = 0
        self.closed = False

    async def open(self) -> None:
        # Generous timeouts: on a loaded machine a frontend opening thousands of
        # sockets answers the last ones late, and a late one still counts.
        request = tornado.httpclient.HTTPRequest(
            self.url, connect_timeout=OPEN_TIMEOUT_S, request_timeout=OPEN_TIMEOUT_S
        )
        self.ws = await tornado.websocket.websocket_connect(request, on_message_callback=self._on_message)
        await asyncio.wait_for(self.synced, OPEN_TIMEOUT_S)

    def _on_message(self, message: str | bytes | None) -> None:
        if message is None:
            self.closed = True
            if not self.synced.done():
                self.synced.set_exception(ConnectionError(f"closed before synced: {self.ws and self.ws.close_code}"))
            return
        kind = json.loads(message).get("type")
        if kind == "synced" and not self.synced.done():
            self.synced.set_result(None)
        elif kind == "pong":
            self.pongs += 1

    def ping(self) -> None:
        if self.ws is not None and not self.closed:
            self.ws.write_message('{"type": "ping"}')

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


async def _sessions(settings: Settings, site_id: str, count: int) -> list[str]:
    """Visitor tokens for ``count`` sessions written straight to Redis: the hash and the
    site's visitor index VisitorSessions.save writes, 500 visitors per pipeline (a
    MULTI per visitor, as save does, took most of a minute for 10,000 here)."""
    redis = state.connect(settings)
    sessions = VisitorSessions(redis, settings)
    ids = [sessions.new_visitor_id() for _ in range(count)]
    now = time.time()
    # redis-py types mapping keys as bytes|str|…; ours are str.
    fields: dict[Any, Any] = {
        "site_id": site_id,
        "frontend_id": "bench",
        "user_agent": "Mozilla/5.0 (bench_idle_ws)",
        "pages": 1,
        "page_url": "http://127.0.0.1/bench/idle",
        "page_title": "Idle",
        "referrer": "",
        "last_seen": int(now * 1000),
        "started_at": int(now * 1000),
    }
    site_key = settings.redis_key("site", site_id, "visitors")
    for start in range(0, count, 500):
        async with redis.pipeline(transaction=False) as pipe:
            for visitor_id in ids[start : start + 500]:
                key = settings.redis_key("visitor", visitor_id)
                pipe.hset(key, mapping=dict(fields))
                pipe.expire(key, settings.session_ttl_s)
            pipe.zadd(site_key, dict.fromkeys(ids[start : start + 500], now))
            pipe.expire(site_key, settings.session_ttl_s)
            await pipe.execute()
    assert await sessions.get(ids[-1]) is not None, "sessions not where the frontend reads them"
    await redis.aclose()
    return [sessions.token_for(v) for v in ids]


async def _open_all(urls: list[str]) -> list[Client]:
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    clients = [Client(url) for url in urls]

    async def one(client: Client) -> None:
        async with gate:
            await client.open()

    await asyncio.gather(*(one(c) for c in clients))
    return clients


async def _idle(clients: list[Client], seconds: float) -> int:
    """Each client pings every WIDGET_PING_S from a random phase, for ``seconds``;
    returns the number of pings sent."""
    started = time.monotonic()
    due = collections.deque(sorted((started + random.uniform(0, WIDGET_PING_S), i) for i in range(len(clients))))
    sent = 0
    while True:
        now = time.monotonic()
        if now - started >= seconds:
            return sent
        while due and due[0][0] <= now:
            at, i = due.popleft()
            clients[i].ping()
            sent += 1
            due.append((at + WIDGET_PING_S, i))  # later than every other entry: stays sorted
        await asyncio.sleep(0.05)


async def _bench(args: argparse.Namespace, settings: Settings) -> None:
    engine = db.engine(settings)
    with engine.begin() as conn:
        account = site_store.account_for_email(conn, "idle@bench.example")
        site_id = site_store.create_site(conn, account, "Idle shop", allowed_domains=["127.0.0.1"]).id
    engine.dispose()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = settings.to_env()
    env.update(
        HABLA_FRONTEND_PORT=str(port),
        HABLA_FRONTEND_ID=f"bench-{uuid.uuid4().hex[:6]}",
        HABLA_PUBLIC_URL=base,
        HABLA_LOG_LEVEL="WARNING",
        # Every visitor here comes from 127.0.0.1: lift the per-IP limit.
        HABLA_IP_REQUESTS_PER_MIN="100000000",
    )
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.rpc_frontend", cwd=ROOT, env=env)
    http = tornado.httpclient.AsyncHTTPClient()
    clients: list[Client] = []
    try:
        for _ in range(200):
            try:
                await http.fetch(f"{base}/healthz")
                break
            except Exception:
                await asyncio.sleep(0.1)
        await http.fetch(f"{base}/api/sites/{site_id}/status")  # the site directory's first read
        started = time.perf_counter()
        tokens = await _sessions(settings, site_id, args.connections + WARM_UP)
        sessions_s = time.perf_counter() - started
        ws = f"ws://127.0.0.1:{port}/api/sites/{site_id}/ws?token="

        # Warm up (first connections allocate what every later one reuses), then the
        # frontend's idle CPU rate with nobody connected.
        warm = await _open_all([ws + t for t in tokens[:WARM_UP]])
        for client in warm:
            client.close()
        await asyncio.sleep(2.0)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(args.baseline_seconds)
        idle_rate = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        rss_before = rss_kib(server.pid)
        client_rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        # N connections.
        cpu0, started = cpu_seconds(server.pid), time.perf_counter()
        clients = await _open_all([ws + t for t in tokens[WARM_UP:]])
        open_s = time.perf_counter() - started
        open_cpu = cpu_seconds(server.pid) - cpu0
        await asyncio.sleep(3.0)
        rss_open = rss_kib(server.pid)

        # Idle, with heartbeats both ways.
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        pings = await _idle(clients, args.idle_seconds)
        await asyncio.sleep(1.0)  # the last pongs
        window = time.monotonic() - t0
        idle_cpu = cpu_seconds(server.pid) - cpu0
        rss_idle = rss_kib(server.pid)
        pongs = sum(c.pongs for c in clients)
        still_open = sum(not c.closed for c in clients)
        client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        n = len(clients)
        per_conn = (rss_open - rss_before) / n
        per_conn_idle = (rss_idle - rss_before) / n
        heartbeat_cpu = max(idle_cpu - idle_rate * window, 0.0)
        protocol_pings = n * window / PING_INTERVAL_S
        print(f"connections open at once:                 {n:10d}   ({still_open} still open after the idle window)")
        print(f"sessions written to Redis:                {len(tokens):10d}   in {sessions_s:.1f} s")
        print(
            f"opening them (each up to 'synced'):       {n / open_s:10.0f} /s   "
            f"frontend CPU {open_cpu / n * 1000:.2f} ms each"
        )
        print(
            f"frontend RSS per connection:              {per_conn:10.1f} KiB "
            f"(RSS {rss_before / 1024:.0f} -> {rss_open / 1024:.0f} MiB; target <= {TARGET_KIB} KiB)"
        )
        print(f"  ... after the idle window:              {per_conn_idle:10.1f} KiB (RSS {rss_idle / 1024:.0f} MiB)")
        print(f"frontend idle CPU, nobody connected:      {idle_rate * 100:10.2f} % of a core")
        print(
            f"heartbeat CPU, {n} idle connections:    {heartbeat_cpu / window * 100:10.2f} % of a core   "
            f"({heartbeat_cpu / window * 60:.2f} CPU s per minute)"
        )
        print(
            f"  per heartbeat:                          {heartbeat_cpu / (pings + protocol_pings) * 1e6:10.0f} us   "
            f"({pings} widget pings, {pongs} pongs; ~{protocol_pings:.0f} protocol pings) over {window:.0f} s"
        )
        print(
            f"client process (not counted above):       peak RSS {client_rss / 1024:.0f} MiB "
            f"(before opening {client_rss_before / 1024:.0f} MiB)"
        )
        print("load average (1, 5, 15 min):              " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    finally:
        for client in clients:
            client.close()
        server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 30)
        except TimeoutError:  # still closing thousands of sockets: it has been measured
            server.kill()
            await server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=10_000)
    # Over the server's 45 s ping interval, so every connection is pinged at least once
    # and the widget's pings (25 s) twice; with the opening, under 2 minutes in all.
    parser.add_argument("--idle-seconds", type=float, default=50.0)
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    args = parser.parse_args()
    # Each connection is a file descriptor here and one in the frontend (which
    # inherits this limit): raise the soft limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.connections + WARM_UP + 1000
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is under the {needed} descriptors needed")
    with sandbox.sandboxed("bench-idle-ws", log_level="WARNING") as settings:
        asyncio.run(_bench(args, settings))


if __name__ == "__main__":
    main()
