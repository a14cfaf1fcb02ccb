"""Console page cost: requests/s, p50/p99 latency and MySQL statements per page,
against a bare Tornado handler measured in the same run and process.

    .venv/bin/python bench/bench_console.py [--requests 300] [--concurrency 10]

Runs the console in-process against an isolated MariaDB database and Redis prefix
(both removed afterwards), with a site holding 50 conversations of 20 lines, and
fetches each page as a logged-in owner. The HTTP client shares the process, so the
absolute figures include its cost; the ratio to the bare handler is what to compare.
Log-in is measured alone (argon2id verification is deliberately slow).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
import tornado.httpclient  # noqa: E402
import tornado.httpserver  # noqa: E402
import tornado.testing  # noqa: E402
import tornado.web  # noqa: E402

from libs.common import db, state  # noqa: E402
from libs.common.db import conversations, messages, site_store  # noqa: E402
from libs.common.settings import Settings  # noqa: E402
from services.console.app import make_app  # noqa: E402
from services.console.context import Console  # noqa: E402
from services.console.sessions import COOKIE_NAME  # noqa: E402

# A busy small site's day (the conversations page shows the 50 most recent) with
# chats of a typical length (Olark reports ~15-20 lines per chat).
CONVERSATIONS, LINES = 50, 20


class Bare(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish("ok")


def seed(engine: sa.Engine, email: str, password_hash: str) -> tuple[int, str, str]:
    now = datetime.datetime(2026, 11, 20, 12, 0)
    with engine.begin() as conn:
        account = int(
            conn.execute(
                db.accounts.insert().values(email=email, password_hash=password_hash, created_at=now)
            ).inserted_primary_key[0]  # type: ignore[index]
        )
        site_id = site_store.create_site(conn, account, "Bench shop").id
        site_store.add_operator(conn, site_id, "ana@example.org", "Ana")
        first = ""
        for n in range(CONVERSATIONS):
            cid = uuid.uuid4().hex
            first = first or cid
            conn.execute(
                conversations.insert().values(
                    id=cid,
                    site_id=site_id,
                    visitor_id=uuid.uuid4().hex,
                    operator_jid="ana@example.org",
                    started_at=now + datetime.timedelta(minutes=n),
                    last_message_at=now + datetime.timedelta(minutes=n + 5),
                    last_seq=LINES,
                )
            )
            conn.execute(
                messages.insert(),
                [
                    {
                        "message_id": uuid.uuid4().hex,
                        "conversation_id": cid,
                        "seq": seq,
                        "sender": "visitor" if seq % 2 else "operator",
                        "operator_jid": None if seq % 2 else "ana@example.org",
                        "body": f"line {seq} <b>of</b> a chat",
                        "sent_at": now,
                    }
                    for seq in range(1, LINES + 1)
                ],
            )
    return account, site_id, first


async def measure(
    client: tornado.httpclient.AsyncHTTPClient, url: str, cookie: str, total: int, concurrency: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = list(range(total))

    async def worker() -> None:
        while queue:
            queue.pop()
            started = time.perf_counter()
            response = await client.fetch(url, headers={"Cookie": cookie}, follow_redirects=False, raise_error=False)
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.code == 200, (url, response.code)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started), latencies


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) > 1 else values[0]


async def main(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:8]
    base = Settings.from_env()
    url = sa.make_url(base.mysql_url).set(database=f"habla_bench_{run}")
    settings = Settings.from_env(
        mysql_url=url.render_as_string(hide_password=False), redis_prefix=f"habla-bench-{run}:"
    )
    db.migrate(settings)
    engine = db.engine(settings)
    statements = [0]
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.__setitem__(0, statements[0] + 1))
    redis = state.connect(settings)
    console = Console(settings, engine, redis)
    password = "bench password"
    email = f"bench-{run}@shop.example"
    account, site_id, conversation = seed(engine, email, console.hasher.hash(password))
    token = await console.sessions.start(account)

    app = make_app(console)
    app.add_handlers(r".*", [(r"/bare", Bare)])
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    root = f"http://127.0.0.1:{port}"
    client = tornado.httpclient.AsyncHTTPClient(max_clients=args.concurrency)
    # A signed cookie as the browser would hold it.
    signed = tornado.web.create_signed_value(settings.secret_key, COOKIE_NAME, token).decode()
    cookie = f"{COOKIE_NAME}={signed}"
    pages = {
        "bare tornado (baseline)": "/bare",
        "sites list": "/account/sites",
        "site overview": f"/account/sites/{site_id}",
        "customiser": f"/account/sites/{site_id}/theme",
        "operators": f"/account/sites/{site_id}/operators",
        f"conversations ({CONVERSATIONS})": f"/account/sites/{site_id}/conversations",
        f"transcript ({LINES} lines)": f"/account/sites/{site_id}/conversations/{conversation}",
    }
    try:
        await measure(client, root + "/account/sites", cookie, 20, 2)  # warm up (templates, pool)
        print(f"{args.requests} requests per page, {args.concurrency} concurrent, one console process")
        print(f"{'page':28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'SQL/req':>8} {'x baseline':>10}")
        baseline = 0.0
        for name, path in pages.items():
            before = statements[0]
            rps, latencies = await measure(client, root + path, cookie, args.requests, args.concurrency)
            per_request = (statements[0] - before) / args.requests
            baseline = baseline or rps
            print(
                f"{name:28} {rps:8.0f} {pct(latencies, 50):8.1f} {pct(latencies, 99):8.1f} "
                f"{per_request:8.1f} {baseline / rps:10.1f}"
            )
        # Log-in: argon2id verification dominates, by design.
        login_ms: list[float] = []
        page = await client.fetch(root + "/account/login")
        xsrf_cookie = next(c for c in page.headers.get_list("Set-Cookie") if c.startswith("_xsrf="))
        xsrf_value = xsrf_cookie.split(";")[0].split("=", 1)[1]
        body = urllib.parse.urlencode({"email": email, "password": password, "_xsrf": xsrf_value})
        for _ in range(args.logins):
            started = time.perf_counter()
            response = await client.fetch(
                root + "/account/login",
                method="POST",
                body=body,
                headers={"Cookie": f"_xsrf={xsrf_value}"},
                follow_redirects=False,
                raise_error=False,
            )
            login_ms.append((time.perf_counter() - started) * 1000)
            assert response.code == 302, response.code
        print(
            f"log-in (argon2id verify), {args.logins} sequential: p50 {pct(login_ms, 50):.1f} ms, "
            f"p99 {pct(login_ms, 99):.1f} ms"
        )
    finally:
        server.stop()
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        engine.dispose()
        server_engine = sa.create_engine(url.set(database=""))
        with server_engine.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `habla_bench_{run}`"))
        server_engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--logins", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
