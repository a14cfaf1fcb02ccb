"""`make run`'s dev stack (tools/devstack.py) starts every service healthy and stops cleanly.

Runs the real thing as a subprocess, isolated like every test run: its own MariaDB
database, Redis prefix, RabbitMQ vhost, state folder and free ports for everything
(Prosody included), then Ctrl-C (SIGINT) and checks nothing is left running.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from libs.common.settings import Settings, env_names

ROOT = Path(__file__).resolve().parents[2]

# Which setting holds the port of each service's /healthz. A new service must be added
# here (the test fails naming it), so `make run` keeps being checked for all of them.
HEALTH_PORTS = {
    "rpc_frontend": "frontend_port",
    "status_image": "status_port",
    "im_gateway": "gateway_metrics_port",
    "transcript_worker": "worker_metrics_port",
    "console": "console_port",
}
# Migrating a fresh database, starting Prosody and every service on a machine shared
# with other test runs: generous, the usual start takes a few seconds.
START_WITHIN_S = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _services() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def stack_settings(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """This run's vhost, plus a database, Redis prefix, state folder and ports of its own."""
    run = uuid.uuid4().hex[:8]
    database = f"habla_devstack_{run}"
    ports: dict[str, Any] = {f.name: _free_port() for f in dataclasses.fields(Settings) if f.name.endswith("_port")}
    stack = dataclasses.replace(
        settings,
        redis_prefix=f"habla-devstack-{run}:",
        mysql_url=sa.make_url(settings.mysql_url).set(database=database).render_as_string(hide_password=False),
        state_dir=str(tmp_path / "state"),
        public_url=f"http://127.0.0.1:{ports['frontend_port']}",
        status_public_url=f"http://127.0.0.1:{ports['status_port']}",
        **ports,
    )
    yield stack
    client = redis.Redis.from_url(stack.redis_url)
    keys = list(client.scan_iter(match=f"{stack.redis_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    server = sa.create_engine(sa.make_url(settings.mysql_url).set(database=None))
    with server.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{database}`"))
    server.dispose()


def _environment(stack: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABLA_")}
    by_env = {f.metadata["env"]: f.name for f in dataclasses.fields(Settings)}
    for name in env_names():
        value = getattr(stack, by_env[name])
        env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@pytest.mark.slow
@pytest.mark.timeout(START_WITHIN_S + 60)  # start, health checks, then up to 30 s to stop
def test_make_run_starts_every_service_healthy_and_ctrl_c_stops_everything(stack_settings: Settings) -> None:
    missing = [name for name in _services() if not hasattr(stack_settings, HEALTH_PORTS.get(name, "-"))]
    assert not missing, f"HEALTH_PORTS must name the Settings field of the /healthz port of {missing}"
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.devstack"],
        cwd=ROOT,
        env=_environment(stack_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    prosody_pidfile = Path(stack_settings.state_dir) / "prosody" / "prosody.pid"
    try:
        deadline = time.monotonic() + START_WITHIN_S
        while True:
            try:
                if "Habla is running" in lines.get(timeout=0.5):
                    break
            except queue.Empty:
                pass
            assert process.poll() is None, "devstack exited early:\n" + "".join(output)
            assert time.monotonic() < deadline, "no 'Habla is running' line:\n" + "".join(output)

        unhealthy: dict[str, object] = {}
        for name in _services():
            port = getattr(stack_settings, HEALTH_PORTS[name])
            while True:
                try:
                    code: object = _healthz(port)
                except OSError as exc:
                    code = exc
                if code == 200:
                    break
                if time.monotonic() > deadline:
                    unhealthy[name] = code
                    break
                time.sleep(0.2)
        assert not unhealthy, f"not healthy: {unhealthy}\n" + "".join(output)
        demo = (Path(stack_settings.state_dir) / "demo.env").read_text()
        site_id = next(line.split("=", 1)[1] for line in demo.splitlines() if line.startswith("HABLA_DEMO_SITE_ID="))
        if "status_image" in _services():
            url = f"{stack_settings.status_public_url}/status/{site_id}/image.png"
            with urllib.request.urlopen(url, timeout=5) as image:
                assert image.status == 200 and image.headers["Content-Type"] == "image/png"
        prosody_pid = int(prosody_pidfile.read_text().strip())
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            reader.join(timeout=10)
            assert process.stdout is not None
            process.stdout.close()
    assert process.returncode == 0, "".join(output)
    assert not Path(f"/proc/{prosody_pid}").exists(), "Prosody is still running"
    assert not _port_open(stack_settings.xmpp_c2s_port)
    for name in _services():
        assert not _port_open(getattr(stack_settings, HEALTH_PORTS[name])), f"{name} still listens"
    assert "habla: stopping" in "".join(output)
