"""Every Habla service as a real subprocess, each killable and restartable on its own,
for the poison and chaos tests.

Isolated like every test run: a vhost, a database, a Redis prefix, a Prosody and free
ports of its own; optionally a private redis-server (tests/redis_server.py) so a
test may stop or rewind Redis without disturbing anyone else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.common.settings import Settings
from tools import prosody, sandbox

ROOT = Path(__file__).resolve().parents[2]

# The services that consume queues or hold chat state, and the setting naming the port
# of each one's /healthz (status_image and console only read Redis and MySQL).
HEALTH_PORTS = {
    "rpc_frontend": "frontend_port",
    "im_gateway": "gateway_metrics_port",
    "transcript_worker": "worker_metrics_port",
}
# A service on this shared 2-core machine starts in 1-3 s; the gateway may first wait
# for a dead predecessor's lease.
START_WITHIN_S = 60.0


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Stack:
    settings: Settings
    prosody: prosody.ProsodyConfig
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, service: str | None = None, **overrides: Any) -> None:
        """Start ``services.<service or name>`` as ``name`` (several gateways: one name
        each, with their own metrics port in ``overrides``)."""
        self.starts[name] = self.starts.get(name, 0) + 1
        settings = dataclasses.replace(self.settings, **overrides) if overrides else self.settings
        with (self.log_dir / f"{name}.{self.starts[name]}.log").open("wb") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{service or name}"],
                cwd=ROOT,
                env=settings.to_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye, no ack, no lease released."""
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def rss_kib(self, name: str) -> int:
        return rss_kib(self.processes[name].pid)

    def healthz(self, name: str) -> int:
        return healthz(getattr(self.settings, HEALTH_PORTS[name]))

    async def wait_healthy(self, name: str, within: float = START_WITHIN_S) -> None:
        deadline = time.monotonic() + within
        while await asyncio.to_thread(self.healthz, name) != 200:
            assert self.alive(name), f"{name} exited: see {self.log_dir}"
            assert time.monotonic() < deadline, f"{name} not healthy within {within} s: see {self.log_dir}"
            await asyncio.sleep(0.2)

    def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes


@asynccontextmanager
async def running_stack(base: Settings, artifacts: Path, label: str, **overrides: Any) -> AsyncIterator[Stack]:
    """A sandbox (vhost, database, Redis prefix), a Prosody and free ports; services are
    started by the test (``stack.start(name)``) and all stopped at the end."""
    box = await asyncio.to_thread(sandbox.create, label, base=base)
    # Overrides first: the partition count decides which component domains Prosody knows.
    cfg = sandbox.prosody_config(dataclasses.replace(box.settings, **overrides))
    xmpp = await asyncio.to_thread(prosody.start, cfg)
    names = (*HEALTH_PORTS.values(), "status_port", "console_port", "smtp_port")
    ports: dict[str, Any] = {name: prosody.free_port() for name in names}
    settings = dataclasses.replace(
        sandbox.with_prosody_ports(box.settings, cfg),
        public_url=f"http://127.0.0.1:{ports['frontend_port']}",
        **ports,
        **overrides,
    )
    log_dir = artifacts / f"{label}-{box.tag}"
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(settings, cfg, log_dir)
    try:
        yield stack
    finally:
        stack.stop_all()
        prosody.stop(xmpp)
        shutil.copy(cfg.dir / "prosody.log", log_dir / "prosody.log")
        shutil.rmtree(cfg.dir, ignore_errors=True)
        # The box's own settings: the shared Redis (a private one may be down by now).
        await asyncio.to_thread(sandbox.remove, box)
