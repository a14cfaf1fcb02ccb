"""Transcript worker throughput against the real local servers, in an isolated corner
(own RabbitMQ vhost, Redis prefix, MariaDB database; all removed afterwards).

Prints, each measured in the same run:
* bare aio-pika consume-and-ack of the same ChatMessages (the ceiling for any consumer);
* archive: messages archived per second (in MySQL, acknowledged) and MySQL statements
  per message (counted with SQLAlchemy's before_cursor_execute event), and the ratio
  to the bare loop;
* email: transcripts rendered and emailed per second to a local SMTP sink
  (tools/smtp_sink in its own process), and the ratio to the bare loop over the same
  Transcript messages.

Usage: .venv/bin/python bench/bench_worker.py [--messages 5000] [--transcripts 300]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiosmtplib
import sqlalchemy as sa
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import e2e_procs  # noqa: E402
from libs.common import codec, db, state, topology  # noqa: E402
from libs.common.db import messages, site_store  # noqa: E402
from libs.common.messaging import Bus  # noqa: E402
from libs.common.settings import Settings  # noqa: E402
from libs.common.sitedir import SiteDirectory  # noqa: E402
from libs.common.state.conversations import ConversationLog  # noqa: E402
from services.transcript_worker import rendering  # noqa: E402
from services.transcript_worker.app import Worker  # noqa: E402
from services.transcript_worker.mailer import POOL_SIZE  # noqa: E402
from tools import prosody, sandbox  # noqa: E402

# Publishes in flight at once while filling queues: enough to keep the broker busy
# with confirms, few enough not to swamp a 2-core machine.
PUBLISH_CONCURRENCY = 100
# Lines per benchmark transcript: a typical support chat.
LINES_PER_TRANSCRIPT = 20


async def _publish_all(bus: Bus, exchange: str, items: list[tuple[str, Any]]) -> None:
    for start in range(0, len(items), PUBLISH_CONCURRENCY):
        chunk = items[start : start + PUBLISH_CONCURRENCY]
        await asyncio.gather(*(bus.publish(exchange, key, struct) for key, struct in chunk))


def _chat_messages(site_id: str, count: int, conversations: int) -> list[tuple[str, Any]]:
    convs = [(uuid.uuid4().hex, uuid.uuid4().hex[:16]) for _ in range(conversations)]
    items = []
    for i in range(count):
        conv, visitor = convs[i % conversations]
        message = codec.ChatMessage(
            message_id=uuid.uuid4().hex,
            conversation_id=conv,
            site_id=site_id,
            visitor_id=visitor,
            sender=codec.SenderKind.VISITOR,
            body=f"Benchmark line {i}: do you ship to Norway, and how long does it take?",
            sent_at_ms=int(time.time() * 1000),
            seq=i // conversations + 1,
        )
        items.append((f"{site_id}.message", message))
    return items


def _transcripts(site_id: str, count: int) -> list[tuple[str, Any]]:
    now = int(time.time() * 1000)
    items = []
    for _ in range(count):
        conv, visitor = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        lines = [
            codec.ChatMessage(
                message_id=uuid.uuid4().hex,
                conversation_id=conv,
                site_id=site_id,
                visitor_id=visitor,
                sender=codec.SenderKind.VISITOR if n % 2 == 0 else codec.SenderKind.OPERATOR,
                operator_jid=None if n % 2 == 0 else "alice@example.org",
                body=f"Line {n} <with> some & text to escape",
                sent_at_ms=now + n,
                seq=n + 1,
            )
            for n in range(LINES_PER_TRANSCRIPT)
        ]
        transcript = codec.Transcript(
            conversation_id=conv,
            site_id=site_id,
            visitor_id=visitor,
            visitor_name="Bench Visitor",
            visitor_email="visitor@bench.example",
            pages=[codec.TranscriptPage(url="https://bench.example/", title="Home", viewed_at_ms=now)],
            messages=lines,
            operator_jids=["alice@example.org"],
            started_at_ms=now,
            closed_at_ms=now + 60_000,
            reason=codec.CloseReason.IDLE,
            site_name="Bench shop",
        )
        items.append(("", transcript))
    return items


async def _bare_consume(settings: Settings, items: list[tuple[str, Any]]) -> float:
    """Messages per second for a plain aio-pika consume-and-ack loop (no decoding) on a
    quorum queue like the work queues, filled through the default exchange so no work
    queue sees these copies."""
    bus = await Bus.connect(settings, "bench-bare")
    channel = await bus.connection.channel()
    await channel.set_qos(prefetch_count=settings.amqp_prefetch)
    name = f"bench.bare.{uuid.uuid4().hex[:6]}"
    queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    await _publish_all(bus, "", [(name, struct) for _, struct in items])
    done = asyncio.Event()
    count = 0

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count
        await message.ack()
        count += 1
        if count == len(items):
            done.set()

    started = time.perf_counter()
    tag = await queue.consume(on_message)
    await done.wait()
    elapsed = time.perf_counter() - started
    await queue.cancel(tag)
    await queue.delete(if_unused=False, if_empty=False)
    await channel.close()
    await bus.close()
    return len(items) / elapsed


async def _bench(args: argparse.Namespace, settings: Settings) -> None:
    engine = db.engine(settings)
    statements = 0

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    with engine.begin() as conn:
        account = site_store.account_for_email(conn, "bench@bench.example")
        site_id = site_store.create_site(conn, account, "Bench shop", transcript_emails=["owner@bench.example"]).id
    # Progress polls go through an engine of their own, so the counter sees only the worker.
    poll_engine = db.engine(settings)
    redis = state.connect(settings)
    publisher = await Bus.connect(settings, "bench-publisher")
    await publisher.declare_topology()

    # --- archive ---------------------------------------------------------------------
    chat = _chat_messages(site_id, args.messages, conversations=max(args.messages // 20, 1))
    bare_archive = await _bare_consume(settings, chat)
    chat = _chat_messages(site_id, args.messages, conversations=max(args.messages // 20, 1))
    await _publish_all(publisher, topology.VISITOR, chat)
    archive_settings = dataclasses.replace(settings, worker_consumers="archive")
    worker_bus = await Bus.connect(archive_settings, "bench-archive")
    worker = Worker.build(archive_settings, worker_bus, redis, engine)
    statements = 0
    archived_before = _archived()
    await worker.start()  # declares the topology again (a dozen round trips), then consumes
    started = time.perf_counter()
    # Progress from the worker's own counter (incremented at each ack, after the
    # commit): a MySQL poll from this event loop would block the worker it measures.
    while True:
        if _archived() - archived_before >= args.messages:
            break
        await asyncio.sleep(0.02)
    archive_elapsed = time.perf_counter() - started
    archive_statements = statements
    await worker.stop()
    with poll_engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one()
    assert stored >= args.messages, f"{stored} messages archived of {args.messages} acknowledged"

    # --- email -----------------------------------------------------------------------
    mail_dir = Path(tempfile.mkdtemp(prefix="habla-bench-mail-"))
    smtp_port = prosody.free_port()
    sink = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.smtp_sink",
        cwd=ROOT,
        env={**os.environ, "HABLA_SMTP_PORT": str(smtp_port), "HABLA_STATE_DIR": str(mail_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    saved = _SinkCounter(sink)
    await saved.listening.wait()
    transcripts = _transcripts(site_id, args.transcripts)
    bare_email = await _bare_consume(settings, transcripts)
    email_settings = dataclasses.replace(settings, worker_consumers="email", smtp_port=smtp_port)
    site = await SiteDirectory(redis, engine, settings).get(site_id)
    bare_smtp = await _bare_smtp(email_settings, site, transcripts, saved)
    await _publish_all(publisher, topology.TRANSCRIPTS, _transcripts(site_id, args.transcripts))
    worker_bus = await Bus.connect(email_settings, "bench-email")
    worker = Worker.build(email_settings, worker_bus, redis, engine)
    saved.reset()
    cpu_before = _own_cpu_seconds(), e2e_procs.cpu_seconds(sink.pid)
    await worker.start()
    emailed_per_s = await saved.rate(args.transcripts)
    worker_cpu = _own_cpu_seconds() - cpu_before[0]
    sink_cpu = e2e_procs.cpu_seconds(sink.pid) - cpu_before[1]
    await worker.stop()

    # --- end to end: "end" published -> transcript email at the SMTP server ----------
    for path in (mail_dir / "mail").glob("*.eml"):
        path.unlink()  # the latency phase below looks for its one mail among these
    latencies = await _close_to_email(settings, engine, redis, publisher, site_id, smtp_port, mail_dir, args.chats)
    sink.terminate()
    await sink.wait()
    shutil.rmtree(mail_dir, ignore_errors=True)
    await publisher.close()
    await redis.aclose()
    engine.dispose()
    poll_engine.dispose()

    archived_per_s = args.messages / archive_elapsed
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bare aio-pika consume+ack (ChatMessage):  {bare_archive:10.0f} msg/s")
    print(
        f"archive (MySQL, batched, acked):          {archived_per_s:10.0f} msg/s   "
        f"ratio to bare {archived_per_s / bare_archive:.2f}"
    )
    print(
        f"MySQL statements per archived message:    {archive_statements / args.messages:10.4f}"
        f"   ({archive_statements} statements for {args.messages} messages)"
    )
    print(f"bare aio-pika consume+ack (Transcript):   {bare_email:10.0f} msg/s")
    print(f"bare aiosmtplib, same mails pre-rendered:  {bare_smtp:8.1f} /s      ({POOL_SIZE} connections to the sink)")
    print(
        f"transcripts rendered + emailed (SMTP sink): {emailed_per_s:8.1f} /s      "
        f"ratio to bare consume {emailed_per_s / bare_email:.3f}, to bare SMTP {emailed_per_s / bare_smtp:.2f}"
    )
    print(
        f"CPU per transcript emailed:                 worker {worker_cpu / args.transcripts * 1000:.2f} ms, "
        f"SMTP sink {sink_cpu / args.transcripts * 1000:.2f} ms"
    )
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"operator 'end' -> transcript email at SMTP: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
        f"({len(latencies)} chats of 4 lines, one at a time, all consumers in one worker)"
    )
    print(f"peak RSS of the benchmark process:        {rss_mb:10.0f} MB")
    print("load average (1, 5, 15 min):               " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


async def _close_to_email(
    settings: Settings,
    engine: sa.Engine,
    redis: Any,
    publisher: Bus,
    site_id: str,
    smtp_port: int,
    mail_dir: Path,
    chats: int,
) -> list[float]:
    """Seconds from publishing an operator's "end" to the transcript email being saved
    by the sink, per chat (each chat's lines published and archived first)."""
    full = dataclasses.replace(settings, smtp_port=smtp_port, archive_batch_ms=settings.archive_batch_ms)
    worker = Worker.build(full, await Bus.connect(full, "bench-e2e"), redis, engine)
    await worker.start()
    log = ConversationLog(redis, full)
    latencies = []
    for _ in range(chats):
        conversation_id, visitor_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        for n in range(4):
            message_id = uuid.uuid4().hex
            appended = await log.append(
                conversation_id,
                message_id,
                {"kind": "message", "sender": "visitor", "body": f"line {n}", "sent_at_ms": 0, "operator_name": None},
            )
            await publisher.publish(
                topology.VISITOR,
                f"{site_id}.message",
                codec.ChatMessage(
                    message_id=message_id,
                    conversation_id=conversation_id,
                    site_id=site_id,
                    visitor_id=visitor_id,
                    sender=codec.SenderKind.VISITOR,
                    body=f"line {n}",
                    sent_at_ms=int(time.time() * 1000),
                    seq=appended.seq,
                ),
            )
        end = codec.OperatorAction(
            action_id=uuid.uuid4().hex,
            conversation_id=conversation_id,
            site_id=site_id,
            visitor_id=visitor_id,
            operator_jid="alice@example.org",
            action="end",
            at_ms=int(time.time() * 1000),
        )
        started = time.perf_counter()
        await publisher.publish(topology.OPERATOR, f"{site_id}.action", end)
        while True:
            if any(conversation_id in p.read_text(errors="replace") for p in (mail_dir / "mail").glob("*.eml")):
                break
            await asyncio.sleep(0.005)
        latencies.append(time.perf_counter() - started)
        for path in (mail_dir / "mail").glob("*.eml"):
            path.unlink()
    await worker.stop()
    return latencies


class _SinkCounter:
    """Counts the mails tools/smtp_sink saves, from its one line per mail on stdout."""

    def __init__(self, sink: asyncio.subprocess.Process) -> None:
        self.count = 0
        self.listening = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(sink))

    async def _read(self, sink: asyncio.subprocess.Process) -> None:
        assert sink.stdout is not None
        async for line in sink.stdout:
            if line.startswith(b"smtp_sink: saved"):
                self.count += 1
                self._changed.set()
            elif line.startswith(b"smtp_sink: listening"):
                self.listening.set()

    def reset(self) -> None:
        self.count = 0

    async def rate(self, expected: int) -> float:
        """Mails per second from the first saved mail to the ``expected``-th (start-up
        of the sender excluded: it is the steady rate that matters)."""
        while self.count == 0:
            await self._wait()
        first, started = self.count, time.perf_counter()
        while self.count < expected:
            await self._wait()
        return (self.count - first) / (time.perf_counter() - started)

    async def _wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()


async def _bare_smtp(settings: Settings, site: Any, items: list[tuple[str, Any]], saved: _SinkCounter) -> float:
    """Mails per second for plain aiosmtplib sends of the same transcripts, rendered
    beforehand, over POOL_SIZE connections of several mails each (the sink's ceiling)."""
    mails = [rendering.transcript_email(struct, site, settings.mail_from) for _, struct in items]
    saved.reset()

    async def connection(share: list[Any]) -> None:
        client = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port)
        await client.connect()
        for mail in share:
            await client.sendmail(mail.sender, mail.recipients, mail.data)
        await client.quit()

    sending = asyncio.gather(*(connection(mails[k::POOL_SIZE]) for k in range(POOL_SIZE)))
    rate = await saved.rate(len(mails))
    await sending
    return rate


def _archived() -> float:
    return REGISTRY.get_sample_value("habla_worker_archived_total") or 0.0


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    # 5000 messages: enough batches (25 of 200) for a steady rate, under a minute here.
    parser.add_argument("--messages", type=int, default=5000)
    # 1000 transcripts: a few seconds of steady sending at the target of 300/s.
    parser.add_argument("--transcripts", type=int, default=1000)
    # 30 chats, one at a time: enough for a p50; the p99 of 30 is the slowest one or two.
    parser.add_argument("--chats", type=int, default=30)
    args = parser.parse_args()

    # A sandbox of its own (vhost, Redis prefix, database with a random tag): the
    # servers are shared with test runs, so a fixed name could be someone else's.
    with sandbox.sandboxed("bench-worker", log_level="WARNING") as settings:
        asyncio.run(_bench(args, settings))


if __name__ == "__main__":
    main()
