"""Worker processes as deployed (`python -m services.transcript_worker`): two of them
compete for every queue and the idle sweep, and each conversation is still closed and
emailed exactly once; a worker killed between sending an email and acknowledging it
loses nothing and causes at most one duplicate, recognisable by its Message-ID."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common.db import conversations, transcripts
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig
from tests.transcript_worker.conftest import Chat, SmtpServer, eventually
from tools import prosody

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings) -> dict[str, str]:
    return settings.to_env()


class WorkerProcess:
    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = dataclasses.replace(settings, worker_metrics_port=prosody.free_port())
        self.log = (ROOT / "tests" / "artifacts" / f"worker-{name}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.transcript_worker"],
            cwd=ROOT,
            env=_env(self.settings),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.settings.worker_metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    async def wait_healthy(self, wait_s: float = 30) -> None:
        deadline = time.monotonic() + wait_s
        while not await asyncio.to_thread(self.healthy):
            assert self.process.poll() is None, f"worker exited with {self.process.returncode}"
            assert time.monotonic() < deadline, "worker did not become healthy"
            await asyncio.sleep(0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


@pytest.fixture
async def spawn(artifacts: Path) -> AsyncIterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _mail_id(chat: Chat) -> str:
    return f"<transcript.{chat.conversation_id}@habla.localhost>"


async def test_two_workers_close_and_email_every_conversation_exactly_once(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
    spawn: list[WorkerProcess],
) -> None:
    # Its own Redis prefix, so the idle sweeper's lease is these workers' (see test_flow.py).
    settings = dataclasses.replace(
        worker_settings,
        conversation_idle_s=2,
        redis_prefix=f"{worker_settings.redis_prefix}two-{uuid.uuid4().hex[:6]}:",
    )
    spawn.extend([WorkerProcess(settings, "a"), WorkerProcess(settings, "b")])
    for worker in spawn:
        await worker.wait_healthy()
    bus = await make_bus("two-workers")
    ended = [Chat(bus, redis_client, settings, site.site_id, "nobody") for _ in range(6)]
    idle = [Chat(bus, redis_client, settings, site.site_id, "nobody") for _ in range(6)]
    for chat in ended + idle:
        await chat.visitor_says("hello")
        await chat.operator_says("hi, how can I help?")
    for chat in ended:
        # Both sides end it at once: the two workers race to close it.
        await chat.operator_action("end")
        await chat.visitor_ends()

    everyone = ended + idle
    await smtp.handler.wait_for(lambda: all(smtp.handler.with_id(_mail_id(c)) for c in everyone), wait_s=60)
    await asyncio.sleep(3)  # room for any duplicate to arrive
    assert {c.conversation_id: len(smtp.handler.with_id(_mail_id(c))) for c in everyone} == {
        c.conversation_id: 1 for c in everyone
    }
    ids = [c.conversation_id for c in everyone]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(conversations.c.id, conversations.c.close_reason).where(conversations.c.id.in_(ids))
        ).all()
        reasons = {row.id: row.close_reason for row in rows}
        stored = conn.execute(
            sa.select(sa.func.count()).select_from(transcripts).where(transcripts.c.conversation_id.in_(ids))
        ).scalar_one()
    assert all(reasons[c.conversation_id] in ("OPERATOR_ENDED", "VISITOR_ENDED") for c in ended)
    assert all(reasons[c.conversation_id] == "IDLE" for c in idle)
    assert stored == len(everyone)
    metrics = ""
    for worker in spawn:
        metrics += await asyncio.to_thread(_metrics, worker.settings.worker_metrics_port)
    assert "habla_worker_archived_total" in metrics and "habla_worker_emails_sent_total" in metrics
    assert [w.stop() for w in spawn] == [0, 0]  # SIGTERM stops them cleanly


async def test_worker_killed_between_sending_and_acknowledging_loses_nothing(
    worker_settings: Settings,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
    site: SiteConfig,
    smtp: SmtpServer,
    make_bus,
    spawn: list[WorkerProcess],
) -> None:
    first = WorkerProcess(worker_settings, "killed")
    spawn.append(first)
    await first.wait_healthy()

    bus = await make_bus("kill")
    chat = Chat(bus, redis_client, worker_settings, site.site_id, "nobody")

    def kill_once(mail: EmailMessage) -> None:
        # Only at this chat's mail: the run's vhost may still hold other tests' transcripts,
        # which the worker emails first (killing it at one of those left ours unsent).
        if mail["Message-ID"] == _mail_id(chat) and first.process.poll() is None:
            os.kill(first.process.pid, signal.SIGKILL)  # before the worker hears "250 OK"

    smtp.handler.on_accept = kill_once
    await chat.visitor_says("please email this")
    await chat.operator_action("end")
    await smtp.handler.wait_for(lambda: len(smtp.handler.with_id(_mail_id(chat))) == 1, wait_s=30)
    await asyncio.to_thread(first.process.wait, 10)
    smtp.handler.on_accept = None

    second = WorkerProcess(worker_settings, "restarted")
    spawn.append(second)
    await second.wait_healthy()

    async def emailed() -> bool:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(transcripts.c.emailed_at).where(transcripts.c.conversation_id == chat.conversation_id)
            ).first()
        return row is not None and row.emailed_at is not None

    await eventually(emailed, wait_s=60, what="transcript marked emailed after the restart")
    await asyncio.sleep(1)
    mails = smtp.handler.with_id(_mail_id(chat))
    assert len(mails) == 2  # the one the killed worker sent, and exactly one repeat
    assert mails[0]["Message-ID"] == mails[1]["Message-ID"] == _mail_id(chat)
