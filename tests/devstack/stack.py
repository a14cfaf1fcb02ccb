"""`make run`'s dev stack (tools/devstack.py) as a subprocess, for the tests in this folder.

Runs the real thing as a subprocess, isolated like every test run: its own MariaDB
database, Redis prefix, RabbitMQ vhost, state folder and free ports for everything
(Prosody included), then Ctrl-C (SIGINT) and checks nothing is left running.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from libs.common.settings import Settings

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


def services() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _environment(stack: Settings) -> dict[str, str]:
    return stack.to_env()


@dataclass
class Stack:
    settings: Settings
    demo: dict[str, str]  # .habla/demo.env: site id, operator login, XMPP port …
    output: list[str]


@contextmanager
def running_stack(stack_settings: Settings) -> Iterator[Stack]:
    """`make run`'s dev stack, started, with every service healthy; Ctrl-C on exit, then
    checks that it exited 0 and left nothing running."""
    missing = [name for name in services() if not hasattr(stack_settings, HEALTH_PORTS.get(name, "-"))]
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
        for name in services():
            port = getattr(stack_settings, HEALTH_PORTS[name])
            while True:
                try:
                    code: object = healthz(port)
                except OSError as exc:
                    code = exc
                if code == 200:
                    break
                if time.monotonic() > deadline:
                    unhealthy[name] = code
                    break
                time.sleep(0.2)
        assert not unhealthy, f"not healthy: {unhealthy}\n" + "".join(output)
        demo_env = (Path(stack_settings.state_dir) / "demo.env").read_text().splitlines()
        demo = dict(line.split("=", 1) for line in demo_env if "=" in line and not line.startswith("#"))
        prosody_pid = int(prosody_pidfile.read_text().strip())
        yield Stack(stack_settings, demo, output)
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
    for name in services():
        assert not _port_open(getattr(stack_settings, HEALTH_PORTS[name])), f"{name} still listens"
    assert "habla: stopping" in "".join(output)
