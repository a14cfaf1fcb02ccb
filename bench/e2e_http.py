"""Page views as a load tool sees them: widget boots and returning views, and their baselines.

A widget boot is what the widget does on a new visitor's first page: POST /session
without a token (the session and the page view in one request). A returning page
view is the same request with the visitor's token. wrk sends them (C, so the load
tool's own CPU stays small next to the servers'), each of ``connections`` keep-alive
connections with one request in flight, as the issue's "20 at once" figure was taken.
Without wrk, a Python client does the same (its own CPU is then a large share).

Baselines for the same request: bare Tornado answering the route with the same bytes
(the least a Tornado process can do), and nginx serving those bytes from a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tornado.httpclient

from bench.bench_status import free_port, wait_http

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
BOOT_BODY = json.dumps({"page": {"url": "https://shop.example/bench", "title": "Bench", "referrer": ""}})


@dataclass
class Load:
    requests: int  # answered 2xx: a refusal (429, 503) is not a page view
    rate: float  # 2xx answers/s (requests / the load's duration)
    p50_ms: float  # latency of every answer, refusals included (wrk does not split them)
    p99_ms: float
    errors: str  # non-2xx or socket errors, "" if none
    cpu_us: float = 0.0  # the server's CPU per request, where measured
    refused: int = 0  # non-2xx answers, left out of requests and rate


def _lua(bodies: list[str]) -> str:
    """A wrk script POSTing each body in turn (text/plain, as the widget sends it)."""
    quoted = ",".join(json.dumps(b) for b in bodies)  # a JSON string is a valid Lua string here
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"\n'
        f"local bodies = {{{quoted}}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #bodies + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[i])\n"
        "end\n"
    )


def wrk(url: str, bodies: list[str], connections: int, seconds: float) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_lua(bodies))
    try:
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script.name]
        out = subprocess.run([*command, url], capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(script.name)

    def latency(percentile: str) -> float:
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        return float(match.group(1)) * _UNITS[match.group(2)]

    done = re.search(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out, re.M)
    assert done, out
    answered = int(done.group(1))
    elapsed_s = float(done.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: .*", out)
    n_refused = int(refused.group(1)) if refused else 0
    accepted = answered - n_refused
    errors = "; ".join(
        [
            *([f"{n_refused} non-2xx answers, not counted"] if refused else []),
            *([socket_errors.group(0)] if socket_errors else []),
        ]
    )
    return Load(accepted, accepted / elapsed_s, latency("50"), latency("99"), errors, refused=n_refused)


async def python_load(url: str, bodies: list[str], connections: int, seconds: float) -> Load:
    """wrk's job in Python, for machines without wrk."""
    client = tornado.httpclient.AsyncHTTPClient(max_clients=connections)
    latencies: list[float] = []
    refused = 0
    stop_at = time.monotonic() + seconds

    async def one_connection(offset: int) -> None:
        nonlocal refused
        i = offset
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            response = await client.fetch(url, method="POST", body=bodies[i % len(bodies)], raise_error=False)
            latencies.append((time.perf_counter() - began) * 1000)
            refused += not 200 <= response.code < 300
            i += 1

    began = time.perf_counter()
    await asyncio.gather(*(one_connection(n) for n in range(connections)))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies) or [0.0]
    accepted = len(latencies) - refused
    return Load(
        accepted,
        accepted / elapsed,
        statistics.median(ordered),
        ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        f"{refused} non-2xx answers, not counted" if refused else "",
        refused=refused,
    )


async def load(url: str, bodies: list[str], connections: int, seconds: float) -> Load:
    if shutil.which("wrk"):
        return await asyncio.to_thread(wrk, url, bodies, connections, seconds)
    return await python_load(url, bodies, connections, seconds)


def load_tool() -> str:
    return "wrk -t1" if shutil.which("wrk") else "a Python client (wrk is not installed; its CPU is large)"


# --- baselines ------------------------------------------------------------------------------


def serve_bare_tornado(port: int, answer_file: Path) -> None:
    """`bench_e2e.py --bare-tornado PORT FILE`: answer every POST with FILE's bytes after
    parsing the JSON body, as the least a Tornado handler of the same route does."""
    import tornado.web

    answer = answer_file.read_bytes()

    class Bare(tornado.web.RequestHandler):
        def post(self, _site_id: str) -> None:
            json.loads(self.request.body)
            self.set_header("Content-Type", "application/json")
            self.write(answer)

    async def run() -> None:
        tornado.web.Application([(r"/api/sites/([^/]+)/session", Bare)]).listen(port, address="127.0.0.1")
        await asyncio.Event().wait()

    asyncio.run(run())


# nginx answers a POST to a static file with 405; error_page turns that into the file.
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
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        error_page 405 =200 $uri;
    }}
}}
"""


@dataclass
class Baselines:
    tornado_url: str
    nginx_url: str | None  # None: nginx is not installed
    pids: dict[str, int]


@contextmanager
def baselines(site_id: str, answer: bytes) -> Iterator[Baselines]:
    """Bare Tornado and (if installed) nginx, both answering the session route with ``answer``."""
    workdir = Path(tempfile.mkdtemp(prefix="habla-bench-e2e-"))
    route = f"/api/sites/{site_id}/session"
    static = workdir / "www" / route.lstrip("/")
    static.parent.mkdir(parents=True)
    static.write_bytes(answer)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        tornado_port = free_port()
        script = Path(__file__).with_name("bench_e2e.py")
        bare = subprocess.Popen([sys.executable, str(script), "--bare-tornado", str(tornado_port), str(static)])
        processes.append(bare)
        pids = {"bare tornado": bare.pid}
        nginx_url = None
        if shutil.which("nginx"):
            nginx_port = free_port()
            (workdir / "nginx.conf").write_text(NGINX_CONF.format(dir=workdir, port=nginx_port))
            for folder in [workdir, *static.parents]:  # workers run as nobody when started by root
                if folder.is_relative_to(workdir):
                    folder.chmod(0o755)
            nginx = subprocess.Popen(["nginx", "-c", str(workdir / "nginx.conf"), "-p", str(workdir)])
            processes.append(nginx)
            nginx_url = f"http://127.0.0.1:{nginx_port}{route}"
            wait_http(nginx_url, nginx)
            pids["nginx"] = nginx.pid
        tornado_url = f"http://127.0.0.1:{tornado_port}{route}"
        wait_post(tornado_url, bare)
        yield Baselines(tornado_url, nginx_url, pids)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_post(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + 20
    while True:
        try:
            request = urllib.request.Request(url, data=BOOT_BODY.encode(), method="POST")
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def returning_body(token: str) -> str:
    """The widget's request on a returning visitor's next page."""
    return json.dumps({"token": token, "page": {"url": "https://shop.example/next", "title": "Next", "referrer": ""}})


async def session_answer(url: str) -> bytes:
    """A real boot's answer: the bytes the baselines send back."""
    client = tornado.httpclient.AsyncHTTPClient()
    return bytes((await client.fetch(url, method="POST", body=BOOT_BODY)).body)
