"""Status image throughput and latency against two baselines measured in the same run.

    .venv/bin/python bench/bench_status.py [--seconds 3] [--rounds 4] [--threads 2] [--connections 50]

Runs wrk against, one after the other:
  * status_image   the real service (`python -m services.status_image`), a site in an
                   isolated MariaDB database and Redis prefix, answered from memory;
  * status 304     the same URL with If-None-Match (what a revalidating browser sends);
  * bare tornado   a Tornado handler writing the same PNG bytes from memory (the goal);
  * nginx          nginx (1 worker, like the one Tornado process) serving the same PNG
                   as a static file;
in interleaved rounds, and prints the median requests/s, p50 and p99 latency and server
CPU time per request of each, and the ratios to both baselines.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libs.common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# wrk's latency units, to milliseconds.
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU (user + system) per request: less noisy than req/s here
    errors: str


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children that are still running (nginx's worker)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    for one in pids:
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (stat fields 14, 15)
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes] | None = None, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wrk(name: str, url: str, server: int, args: argparse.Namespace, headers: list[str], *, warm_up: bool) -> Result:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    if warm_up:  # a first, unmeasured second: connections open, caches and allocator warm
        subprocess.run([*command[:3], "-d1s", url], capture_output=True, check=True)
    cpu_before = cpu_seconds(server)
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(server) - cpu_before

    def latency(percentile: str) -> float:
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        return float(match.group(1)) * _UNITS[match.group(2)]

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    requests = re.search(r"^\s+(\d+) requests in", out, re.M)
    assert rps and requests, out
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    cpu_us = cpu / int(requests.group(1)) * 1e6
    return Result(name, float(rps.group(1)), latency("50"), latency("99"), cpu_us, bad.group(0) if bad else "")


def median_result(name: str, runs: list[Result]) -> Result:
    return Result(
        name,
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        statistics.median(r.cpu_us for r in runs),
        "; ".join(r.errors for r in runs if r.errors),
    )


def bare_tornado(port: int, png: Path) -> None:
    """The baseline: the least a Tornado handler can do to send these bytes."""
    import asyncio

    import tornado.web

    body = png.read_bytes()

    class Bare(tornado.web.RequestHandler):
        def get(self) -> None:
            self.set_header("Content-Type", "image/png")
            self.write(body)

    async def run() -> None:
        tornado.web.Application([(r"/.*", Bare)]).listen(port, address="127.0.0.1")
        await asyncio.Event().wait()

    asyncio.run(run())


NGINX_CONF = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ image/png png; }}
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        add_header Cache-Control no-cache;
    }}
}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 4 rounds: each target runs once in each position of the rotating order.
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--bare-tornado", nargs=2, metavar=("PORT", "PNG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_tornado:
        bare_tornado(int(args.bare_tornado[0]), Path(args.bare_tornado[1]))
        return 0
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"bench_status: {tool} is not installed (scripts/setup.sh installs it)", file=sys.stderr)
            return 1

    import sqlalchemy as sa

    from libs.common import db
    from libs.common.db import site_store
    from libs.common.settings import Settings

    run = uuid.uuid4().hex[:8]
    base = Settings.from_env()
    database = f"habla_bench_status_{run}"
    settings = Settings.from_env(
        redis_prefix=f"habla-bench-status-{run}:",
        mysql_url=sa.make_url(base.mysql_url).set(database=database).render_as_string(hide_password=False),
    )
    workdir = Path(tempfile.mkdtemp(prefix="habla-bench-status-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        db.migrate(settings)
        engine = db.engine(settings)
        with engine.begin() as conn:
            site_id = site_store.create_site(conn, site_store.account_for_email(conn, "bench@example.test"), "Bench").id
        engine.dispose()

        status_port, bare_port, nginx_port = free_port(), free_port(), free_port()
        env = {
            **os.environ,
            "HABLA_STATUS_PORT": str(status_port),
            "HABLA_REDIS_PREFIX": settings.redis_prefix,
            "HABLA_MYSQL_URL": settings.mysql_url,
            "HABLA_LOG_LEVEL": "WARNING",
        }
        path = f"/status/{site_id}/image.png"
        status = subprocess.Popen([sys.executable, "-m", "services.status_image"], cwd=ROOT, env=env)
        processes.append(status)
        wait_http(f"http://127.0.0.1:{status_port}/healthz", status)
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}{path}") as response:
            png, etag = response.read(), response.headers["Etag"]

        static = workdir / "www" / path.lstrip("/")
        static.parent.mkdir(parents=True)
        static.write_bytes(png)
        bare = subprocess.Popen([sys.executable, __file__, "--bare-tornado", str(bare_port), str(static)], cwd=ROOT)
        processes.append(bare)
        (workdir / "nginx.conf").write_text(NGINX_CONF.format(dir=workdir, port=nginx_port))
        # nginx's workers run as nobody when started by root: let them read the file.
        for folder in [workdir, *static.parents]:
            if folder.is_relative_to(workdir):
                folder.chmod(0o755)
        nginx = subprocess.Popen(["nginx", "-c", str(workdir / "nginx.conf"), "-p", str(workdir)])
        processes.append(nginx)
        wait_http(f"http://127.0.0.1:{bare_port}{path}", bare)
        wait_http(f"http://127.0.0.1:{nginx_port}{path}", nginx)

        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {len(png)}-byte PNG, "
            f"{os.cpu_count()} CPUs shared with wrk (figures are noisy on a busy machine)",
            flush=True,
        )
        targets = [
            ("status_image", f"http://127.0.0.1:{status_port}{path}", status.pid, []),
            ("status 304", f"http://127.0.0.1:{status_port}{path}", status.pid, [f"If-None-Match: {etag}"]),
            ("bare tornado", f"http://127.0.0.1:{bare_port}{path}", bare.pid, []),
            ("nginx static", f"http://127.0.0.1:{nginx_port}{path}", nginx.pid, []),
        ]
        # Rounds interleave the targets, so a burst of load from elsewhere on the
        # machine hits all of them alike, and rotate their order: whichever ran first in
        # a round measured consistently slower here. Each figure is the median.
        rounds: dict[str, list[Result]] = {name: [] for name, *_ in targets}
        for number in range(args.rounds):
            shift = number % len(targets)
            for name, url, pid, headers in targets[shift:] + targets[:shift]:
                rounds[name].append(wrk(name, url, pid, args, headers, warm_up=number == 0))
        results = [median_result(name, runs) for name, runs in rounds.items()]
        print(f"{'target':<14} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10}  errors")
        for r in results:
            print(f"{r.name:<14} {r.rps:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.cpu_us:>10.1f}  {r.errors or '-'}")
        ours, tornado_, nginx_ = results[0], results[2], results[3]
        for baseline in (tornado_, nginx_):
            print(
                f"status_image / {baseline.name}: throughput x{ours.rps / baseline.rps:.2f}, "
                f"p50 x{ours.p50_ms / baseline.p50_ms:.2f}, p99 x{ours.p99_ms / baseline.p99_ms:.2f}, "
                f"CPU per request x{ours.cpu_us / baseline.cpu_us:.2f}"
            )
        return 0
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        _cleanup(settings, database)
        shutil.rmtree(workdir, ignore_errors=True)


def _cleanup(settings: Settings, database: str) -> None:
    """Drop the bench's Redis keys and database."""
    import redis
    import sqlalchemy as sa

    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    server = sa.create_engine(sa.make_url(settings.mysql_url).set(database=None))
    with server.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{database}`"))
    server.dispose()


if __name__ == "__main__":
    sys.exit(main())
