"""A gateway environment of its own (vhost, Redis prefix, Prosody) for subprocess gateways.

The session's in-process gateway holds the run's component domain and consumes the
run's im_gateway.<domain>.visitor queue; a subprocess gateway needs its own of both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.common import codec, topology
from libs.common.messaging import Bus
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog, chat_line
from libs.common.state.presence import SiteStatusReader
from tests.im_gateway.operator_client import DEADLINE_S
from tools import prosody, sandbox

ROOT = Path(__file__).resolve().parents[2]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def env_of(settings: Settings) -> dict[str, str]:
    """The environment that makes Settings.from_env() return ``settings``."""
    return settings.to_env()


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
        """SIGTERM, and the exit status; -9 if it had to be killed after a generous
        deadline (a graceful stop takes a few seconds; a loaded machine, more)."""
        if process.poll() is None:
            process.terminate()
            try:
                return process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                return -9
        return process.returncode


@asynccontextmanager
async def isolated_gateway_env(base: Settings, artifacts: Path, **overrides: object) -> AsyncIterator[Isolated]:
    # A vhost and Redis prefix of its own; MySQL (operators, sites) is the run's.
    box = await asyncio.to_thread(sandbox.create, "gw", base=base, own_database=False)
    tag = box.tag
    # Overrides first: the partition count decides which component domains Prosody knows.
    cfg = sandbox.prosody_config(dataclasses.replace(box.settings, **overrides))  # type: ignore[arg-type]
    process = await asyncio.to_thread(prosody.start, cfg)
    settings = dataclasses.replace(
        sandbox.with_prosody_ports(box.settings, cfg),
        redis_prefix=f"{base.redis_prefix}gw-{tag}:",
        gateway_metrics_port=prosody.free_port(),
        **overrides,  # type: ignore[arg-type]
    )
    log_dir = artifacts / f"gateway-{tag}"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = Isolated(settings, cfg, log_dir, process)
    try:
        yield env
    finally:
        prosody.stop(env.prosody_process)
        shutil.copy(cfg.dir / "prosody.log", log_dir / "prosody.log")
        shutil.rmtree(cfg.dir, ignore_errors=True)
        # The prefix above is under the run's own, so the sandbox's removal and the
        # run's clean-up both reach it.
        await asyncio.to_thread(sandbox.remove, dataclasses.replace(box, settings=settings))


async def wait_until(predicate, within: float = DEADLINE_S, every: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(every)
    raise TimeoutError(f"condition not met within {within} s")


def shown_once(received: list[Any]) -> tuple[list[str], int]:
    """Bodies as a client that honours message ids shows them (a stanza id or XEP-0359
    origin-id it has already shown is not shown again), and how many copies it dropped.

    A line written to the stream but not yet confirmed by the server when the gateway
    died is sent again under the same id: delivered at least once, shown once."""
    ids: dict[str, str] = {}
    copies = 0
    for item in received:
        key = item.stanza_id or f"no-id:{id(item)}"
        if key in ids:
            copies += 1
            assert ids[key] == item.body, f"one id, two different lines: {key}"
            continue
        ids[key] = item.body
    return list(ids.values()), copies


async def visitor_line(
    log: ConversationLog,
    bus: Bus,
    site_id: str,
    visitor_id: str,
    conversation_id: str,
    body: str,
    page_url: str | None = None,
) -> str:
    """What the frontend does for a visitor line: log it, then publish it; its id."""
    message_id = uuid.uuid4().hex
    sent_at = int(time.time() * 1000)
    appended = await log.append(conversation_id, message_id, chat_line("visitor", body, sent_at))
    message = codec.ChatMessage(
        message_id=message_id,
        conversation_id=conversation_id,
        site_id=site_id,
        visitor_id=visitor_id,
        sender=codec.SenderKind.VISITOR,
        body=body,
        sent_at_ms=sent_at,
        seq=appended.seq,
        page_url=page_url,
    )
    await bus.publish(topology.VISITOR, f"{site_id}.message", message)
    return message_id


async def site_online(status: SiteStatusReader, site_id: str) -> bool:
    """Whether the gateway announces the site online (a predicate for wait_until)."""
    return (await status.get(site_id)).online
