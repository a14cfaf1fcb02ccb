"""A gateway environment of its own (vhost, Redis prefix, Prosody) for subprocess gateways.

The session's in-process gateway holds the run's component domain and consumes the
run's im_gateway.visitor queue; a subprocess gateway needs its own of both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from libs.common.settings import Settings
from tools import prosody

ROOT = Path(__file__).resolve().parents[2]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def env_of(settings: Settings) -> dict[str, str]:
    """The environment that makes Settings.from_env() return ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABLA_")}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        env[f.metadata["env"]] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


@dataclass
class Isolated:
    settings: Settings
    prosody: prosody.ProsodyConfig
    log_dir: Path
    prosody_process: subprocess.Popen[bytes]

    def stop_prosody(self) -> None:
        prosody.stop(self.prosody_process)

    def start_prosody(self) -> None:
        """Same config, ports and data folder (rosters survive)."""
        self.prosody_process = prosody.start(self.prosody)

    def start_gateway(self, name: str) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "services.im_gateway"],
                cwd=ROOT, env=env_of(self.settings), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    @staticmethod
    def terminate(process: subprocess.Popen[bytes]) -> int:
        if process.poll() is None:
            process.terminate()
            try:
                return process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                return -9
        return process.returncode


@asynccontextmanager
async def isolated_gateway_env(base: Settings, artifacts: Path, **overrides: object) -> AsyncIterator[Isolated]:
    tag = uuid.uuid4().hex[:8]
    vhost = f"habla-gw-{tag}"
    await asyncio.to_thread(_rabbitmqctl, "add_vhost", vhost)
    await asyncio.to_thread(_rabbitmqctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    folder = Path(tempfile.mkdtemp(prefix="habla-prosody-gw-"))
    cfg = prosody.ProsodyConfig(
        dir=folder,
        domain=base.xmpp_domain,
        component_domain=base.xmpp_component_domain,
        component_secret=base.xmpp_component_secret,
        c2s_port=prosody.free_port(),
        component_port=prosody.free_port(),
    )
    process = await asyncio.to_thread(prosody.start, cfg)
    settings = dataclasses.replace(
        base,
        amqp_url=f"amqp://guest:guest@127.0.0.1:5672/{urllib.parse.quote(vhost, safe='')}",
        redis_prefix=f"{base.redis_prefix}gw-{tag}:",
        xmpp_c2s_port=cfg.c2s_port,
        xmpp_component_port=cfg.component_port,
        gateway_metrics_port=prosody.free_port(),
        frontend_id=f"fe-{tag}",
        **overrides,  # type: ignore[arg-type]
    )
    log_dir = artifacts / f"gateway-{tag}"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = Isolated(settings, cfg, log_dir, process)
    try:
        yield env
    finally:
        prosody.stop(env.prosody_process)
        shutil.copy(folder / "prosody.log", log_dir / "prosody.log")
        shutil.rmtree(folder, ignore_errors=True)
        await asyncio.to_thread(_rabbitmqctl, "delete_vhost", vhost)
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def wait_until(predicate, within: float = 15.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(every)
    raise TimeoutError(f"condition not met within {within} s")
