"""Status image throughput and latency, both paths and their baselines in one run.

    .venv/bin/python bench/bench_status.py [--seconds 3] [--rounds 4] [--threads 2] [--connections 50]

Runs wrk against, one after the other:
  * tornado path   the real service (`python -m services.status_image`, writing its files
                   to HABLA_STATUS_FILES_DIR), a site in an isolated MariaDB database and
                   Redis prefix, asked directly: the answer from memory (what a site not
                   rendered yet, or a deployment without nginx, gets);
  * tornado 304    the same URL with If-None-Match (what a revalidating browser sends);
  * nginx files    nginx (tools/nginx.py, 1 worker) in front of it, serving the file the
                   service wrote for the site (the production path);
  * nginx files 304  the same with If-None-Match;
  * bare tornado   a Tornado handler writing the same PNG bytes from memory;
  * nginx static   nginx (1 worker) serving the same PNG as a plain static file;
in interleaved rounds, and prints the median requests/s, p50 and p99 latency and server
CPU time per request of each (for nginx files: nginx and the service together), the
ratios to the baselines, and the load average before and after.
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


def wrk(
    name: str, url: str, servers: list[int], args: argparse.Namespace, headers: list[str], *, warm_up: bool
) -> Result:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    if warm_up:  # a first, unmeasured second: connections open, caches and allocator warm
        subprocess.run([*command[:3], "-d1s", url], capture_output=True, check=True)
    cpu_before = sum(cpu_seconds(pid) for pid in servers)
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    cpu = sum(cpu_seconds(pid) for pid in servers) - cpu_before

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
    from tools import nginx as nginx_tool

    for tool in ("wrk", "nginx"):
        if (shutil.which(tool) if tool == "wrk" else nginx_tool.binary()) is None:
            print(f"bench_status: {tool} is not installed (scripts/setup.sh installs it)", file=sys.stderr)
            return 1

    import sqlalchemy as sa

    from libs.common import db
    from libs.common.db import site_store
    from libs.common.settings import Settings
    from services.status_image.files import nginx_etag
    from tools import nginx

    run = uuid.uuid4().hex[:8]
    base = Settings.from_env()
    database = f"habla_bench_status_{run}"
    settings = Settings.from_env(
        redis_prefix=f"habla-bench-status-{run}:",
        mysql_url=sa.make_url(base.mysql_url).set(database=database).render_as_string(hide_password=False),
    )
    workdir = Path(tempfile.mkdtemp(prefix="habla-bench-status-"))
    processes: list[subprocess.Popen[bytes]] = []
    nginxes: list[subprocess.Popen[bytes]] = []
    load_before = os.getloadavg()
    try:
        db.migrate(settings)
        engine = db.engine(settings)
        with engine.begin() as conn:
            site_id = site_store.create_site(conn, site_store.account_for_email(conn, "bench@example.test"), "Bench").id
        engine.dispose()

        status_port, bare_port = free_port(), free_port()
        env = {
            **os.environ,
            "HABLA_STATUS_PORT": str(status_port),
            "HABLA_STATUS_FILES_DIR": str(workdir / "files"),
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
        front = nginx.StatusNginx(workdir / "nginx-files", workdir / "files", free_port(), [status_port])
        baseline = nginx.StatusNginx(workdir / "nginx-static", workdir / "www", free_port(), static=True)
        for server in (front, baseline):
            nginxes.append(nginx.start(server))
        wait_http(f"http://127.0.0.1:{bare_port}{path}", bare)
        # The first request above made the service write the site's files: wait until
        # nginx serves them (its ETag), not Tornado behind it.
        nginx_etag_now = ""
        deadline = time.monotonic() + 10
        while nginx_etag_now != nginx_etag(png):
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx never served the written file (ETag {nginx_etag_now})")
            time.sleep(0.05)
            with urllib.request.urlopen(f"http://127.0.0.1:{front.port}{path}") as response:
                assert response.read() == png
                nginx_etag_now = response.headers["Etag"]

        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {len(png)}-byte PNG, "
            f"{os.cpu_count()} CPUs shared with wrk (figures are noisy on a busy machine); "
            f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}",
            flush=True,
        )
        front_url, tornado_url = f"http://127.0.0.1:{front.port}{path}", f"http://127.0.0.1:{status_port}{path}"
        both = [nginxes[0].pid, status.pid]  # nginx serves; the service keeps the file right
        targets = [
            ("tornado path", tornado_url, [status.pid], []),
            ("tornado 304", tornado_url, [status.pid], [f"If-None-Match: {etag}"]),
            ("nginx files", front_url, both, []),
            ("nginx files 304", front_url, both, [f"If-None-Match: {nginx_etag(png)}"]),
            ("bare tornado", f"http://127.0.0.1:{bare_port}{path}", [bare.pid], []),
            ("nginx static", f"http://127.0.0.1:{baseline.port}{path}", [nginxes[1].pid], []),
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
        print(f"{'target':<16} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10}  errors")
        for r in results:
            print(f"{r.name:<16} {r.rps:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.cpu_us:>10.1f}  {r.errors or '-'}")
        by_name = {r.name: r for r in results}
        for ours, versus in (
            ("tornado path", "bare tornado"),
            ("tornado path", "nginx static"),
            ("nginx files", "nginx static"),
            ("nginx files 304", "nginx static"),
            ("nginx files", "tornado path"),
        ):
            a, b = by_name[ours], by_name[versus]
            print(
                f"{ours} / {versus}: throughput x{a.rps / b.rps:.2f}, p50 x{a.p50_ms / b.p50_ms:.2f}, "
                f"p99 x{a.p99_ms / b.p99_ms:.2f}, CPU per request x{a.cpu_us / b.cpu_us:.2f}"
            )
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    finally:
        for process in nginxes:
            nginx.stop(process)
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
