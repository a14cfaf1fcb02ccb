"""Transcript worker throughput against the real local servers, in an isolated corner
(own RabbitMQ vhost, Redis prefix, MariaDB database; all removed afterwards).

The worker runs as deployed: ``python -m services.transcript_worker`` processes with
``HABLA_WORKER_CONSUMERS`` set, so their CPU (from /proc) is theirs alone and nothing
the bench does (publishing, polling, counting mails) runs on their event loop. Each
round prints, measured in the same run:

* bare aio-pika consume-and-ack of the same ChatMessages (the ceiling for any
  consumer), then the archive (one worker process, ``HABLA_WORKER_CONSUMERS=archive``):
  messages archived per second (rows in MySQL), the ratio to the bare loop, and the
  worker's CPU per message;
* email: transcripts rendered and emailed per second to the SMTP sink by 1 (and 2, …)
  worker processes (``HABLA_WORKER_CONSUMERS=email``; they compete for the queue), and
  their CPU per transcript.

The sink is Postfix's ``smtp-sink`` (C; Debian package postfix, which scripts/setup.sh
installs without configuring or starting Postfix itself) when it is installed, else
tools/smtp_sink (aiosmtpd, Python: slower than 300 mails/s on a busy machine, so then
the sink, not the worker, is what is measured). Bare aiosmtplib sending the same mails,
rendered beforehand, to the same sink is printed as the ceiling.

``--before DIR`` (a copy of older code, e.g. ``git archive main | tar -x -C DIR``) runs
every round for both codes, alternating before, after, after, before, so a change is
compared under the same load. Last, the latency from an operator's "end" to the
transcript at the SMTP server (this tree's code, one worker in the bench process).

Usage: .venv/bin/python bench/bench_worker.py [--messages 5000] [--transcripts 1000]
       [--email-processes 1,2] [--sink auto|postfix|python] [--before DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import resource
import shutil
import signal
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import e2e_procs  # noqa: E402
from libs.common import codec, db, state, topology  # noqa: E402
from libs.common.db import messages, page_views, site_store  # noqa: E402
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
# Postfix's test server (Debian package postfix); see the module docstring.
POSTFIX_SINK = "/usr/sbin/smtp-sink"
# How often the archive's progress is read from MySQL (by the bench, not the worker).
POLL_S = 0.01


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


async def _bare_consume(settings: Settings, items: list[tuple[str, Any]]) -> _Rate:
    """Messages per second, first ack to last, and the bench process's CPU per message
    meanwhile (it does nothing else), for a plain aio-pika consume-and-ack loop (no
    decoding) on a quorum queue like the work queues, filled through the default
    exchange so no work queue sees these copies."""
    bus = await Bus.connect(settings, "bench-bare")
    channel = await bus.connection.channel()
    await channel.set_qos(prefetch_count=settings.amqp_prefetch)
    name = f"bench.bare.{uuid.uuid4().hex[:6]}"
    queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    await _publish_all(bus, "", [(name, struct) for _, struct in items])
    done = asyncio.Event()
    count = 0
    first = cpu = 0.0

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count, first, cpu
        await message.ack()
        count += 1
        if count == 1:
            first, cpu = time.perf_counter(), _own_cpu_seconds()
        if count == len(items):
            done.set()

    tag = await queue.consume(on_message)
    await done.wait()
    elapsed, cpu = time.perf_counter() - first, _own_cpu_seconds() - cpu
    await queue.cancel(tag)
    await queue.delete(if_unused=False, if_empty=False)
    await channel.close()
    await bus.close()
    return _Rate((len(items) - 1) / elapsed, cpu / (len(items) - 1) * 1000)


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _WorkerProcess:
    """``python -m services.transcript_worker`` from the code in ``tree``."""

    def __init__(self, tree: Path | str, settings: Settings, consumers: str, log_dir: Path) -> None:
        self.settings = dataclasses.replace(
            settings, worker_consumers=consumers, worker_metrics_port=prosody.free_port()
        )
        self._log = (log_dir / f"worker-{consumers}-{uuid.uuid4().hex[:6]}.log").open("wb")
        # The tree is the working directory, so `services` and `libs` are its own
        # (the current directory comes first on sys.path, before the editable install).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.transcript_worker"],
            cwd=tree,
            env=self.settings.to_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def cpu_seconds(self) -> float:
        return e2e_procs.cpu_seconds(self.process.pid)

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}; see {self._log.name}")

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        self._log.close()


class _Sink:
    """An SMTP sink in its own process, counting the mails it accepted: Postfix's
    smtp-sink (its -c counters, ``mesg=N``, rewritten in place with CR) or
    tools/smtp_sink (one "saved" line per mail)."""

    def __init__(self, kind: str, port: int, mail_dir: Path) -> None:
        self.kind, self.port, self.mail_dir = kind, port, mail_dir
        self.total = 0
        self._offset = 0
        self._changed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return "Postfix smtp-sink (C)" if self.kind == "postfix" else "tools/smtp_sink (aiosmtpd, Python)"

    async def start(self) -> None:
        if self.kind == "postfix":
            # As root smtp-sink insists on dropping privileges once it has its socket.
            user = ["-u", "nobody"] if os.geteuid() == 0 else []
            self.process = await asyncio.create_subprocess_exec(
                POSTFIX_SINK, "-c", *user, f"127.0.0.1:{self.port}", "256", stdout=subprocess.PIPE
            )
        else:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tools.smtp_sink",
                cwd=ROOT,
                env={**os.environ, "HABLA_SMTP_PORT": str(self.port), "HABLA_STATE_DIR": str(self.mail_dir)},
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        self._task = asyncio.create_task(self._read())
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on port {self.port}")

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        counters = re.compile(rb"mesg=(\d+)")
        while chunk := await self.process.stdout.read(65536):
            if self.kind == "postfix":
                found = counters.findall(chunk)
                if found:
                    self.total = int(found[-1])
            else:
                self.total += chunk.count(b"smtp_sink: saved")
            self._changed.set()

    @property
    def count(self) -> int:
        return self.total - self._offset

    def reset(self) -> None:
        self._offset = self.total

    def cpu_seconds(self) -> float:
        return e2e_procs.cpu_seconds(self.process.pid) if self.process else 0.0

    async def wait_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        if self._task is not None:
            await self._task


@dataclasses.dataclass
class _Rate:
    per_s: float
    cpu_ms: float  # worker CPU per unit, over the same window


def _page_views(site_id: str, count: int) -> list[tuple[str, Any]]:
    """What a widget boot publishes for a new visitor: VisitorEvent ARRIVED, then the
    PageView (rpc_frontend's ChatService.visit)."""
    now = int(time.time() * 1000)
    items: list[tuple[str, Any]] = []
    for n in range(count):
        visitor = uuid.uuid4().hex[:16]
        event = codec.VisitorEvent(visitor_id=visitor, site_id=site_id, kind=codec.VisitorEventKind.ARRIVED, at_ms=now)
        view = codec.PageView(
            visitor_id=visitor,
            site_id=site_id,
            url=f"https://bench.example/products/{n}",
            title="Products",
            referrer="https://search.example/?q=shoes",
            viewed_at_ms=now,
            user_agent="Mozilla/5.0 (X11; Linux x86_64) bench",
        )
        items += [(f"{site_id}.event", event), (f"{site_id}.pageview", view)]
    return items


async def _consume_round(
    tree: Path | str,
    settings: Settings,
    publisher: Bus,
    poll_engine: sa.Engine,
    items: list[tuple[str, Any]],
    table: sa.Table,
    consumers: str,
    log_dir: Path,
    procs: int = 1,
) -> _Rate:
    """Rows of ``table`` stored per second by ``procs`` workers running ``consumers``, once
    ``items`` wait in the queues (from the first committed batch to the last: start-up
    excluded), and the worker's CPU per row over the same window."""
    expected = sum(1 for _, struct in items if table is messages or type(struct).__name__ == "PageView")
    await _publish_all(publisher, topology.VISITOR, items)

    def stored() -> int:
        with poll_engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    before = stored()
    workers = [_WorkerProcess(tree, settings, consumers, log_dir) for _ in range(procs)]
    try:
        while (first := stored()) == before:
            for worker in workers:
                worker.check()
            await asyncio.sleep(POLL_S)
        started, cpu = time.perf_counter(), sum(w.cpu_seconds() for w in workers)
        while (now := stored()) < before + expected:
            for worker in workers:
                worker.check()
            await asyncio.sleep(POLL_S)
        elapsed, cpu = time.perf_counter() - started, sum(w.cpu_seconds() for w in workers) - cpu
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
    return _Rate((now - first) / elapsed, cpu / (now - first) * 1000)


async def _email_round(
    tree: Path | str,
    settings: Settings,
    publisher: Bus,
    sink: _Sink,
    site_id: str,
    count: int,
    procs: int,
    log_dir: Path,
) -> _Rate:
    await _publish_all(publisher, topology.TRANSCRIPTS, _transcripts(site_id, count))
    sink.reset()
    workers = [_WorkerProcess(tree, settings, "email", log_dir) for _ in range(procs)]
    try:
        while sink.count == 0:
            for worker in workers:
                worker.check()
            await asyncio.wait_for(sink.wait_change(), 60)
        first, started = sink.count, time.perf_counter()
        cpu = sum(w.cpu_seconds() for w in workers)
        while sink.count < count:
            await asyncio.wait_for(sink.wait_change(), 60)
        done = sink.count
        elapsed, cpu = time.perf_counter() - started, sum(w.cpu_seconds() for w in workers) - cpu
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
    return _Rate((done - first) / elapsed, cpu / (done - first) * 1000)


async def _bench(args: argparse.Namespace, settings: Settings) -> None:
    engine = db.engine(settings)
    with engine.begin() as conn:
        account = site_store.account_for_email(conn, "bench@bench.example")
        site_id = site_store.create_site(conn, account, "Bench shop", transcript_emails=["owner@bench.example"]).id
    poll_engine = db.engine(settings)
    redis = state.connect(settings)
    publisher = await Bus.connect(settings, "bench-publisher")
    await publisher.declare_topology()
    log_dir = Path(tempfile.mkdtemp(prefix="habla-bench-worker-"))
    kind = args.sink
    if kind == "auto":
        kind = "postfix" if os.access(POSTFIX_SINK, os.X_OK) else "python"
    sink = _Sink(kind, prosody.free_port(), log_dir)
    await sink.start()
    try:
        settings = dataclasses.replace(settings, smtp_port=sink.port)
        codes = [("after", ROOT)]
        if args.before:
            before = ("before", args.before)
            codes = [before, ("after", ROOT), ("after", ROOT), before]
        procs = [int(p) for p in args.email_processes.split(",") if p.strip()]
        print(f"sink: {sink.name}; load average at start {_load()}", flush=True)

        # The sink's ceiling: bare aiosmtplib, the same mails rendered beforehand, over the
        # connections of one worker process and of the most processes measured.
        site = await SiteDirectory(redis, engine, settings).get(site_id)
        ceilings = {}
        for connections in sorted({POOL_SIZE, POOL_SIZE * max(procs)}):
            rendered = _transcripts(site_id, args.transcripts)
            ceilings[connections] = await _bare_smtp(settings, site, rendered, sink, connections)
            print(f"bare aiosmtplib, {connections} connections: {ceilings[connections]:8.1f} mails/s", flush=True)

        rows = []
        for label, tree in codes:
            bare = await _bare_consume(settings, _chat_messages(site_id, args.messages, max(args.messages // 20, 1)))
            chat = _chat_messages(site_id, args.messages, max(args.messages // 20, 1))
            archive = await _consume_round(tree, settings, publisher, poll_engine, chat, messages, "archive", log_dir)
            if args.archive_processes > 1:
                chat = _chat_messages(site_id, args.messages, max(args.messages // 20, 1))
                archive_n = await _consume_round(
                    tree, settings, publisher, poll_engine, chat, messages, "archive", log_dir, args.archive_processes
                )
                print(
                    f"{label:6s}  archive, {args.archive_processes} processes: {archive_n.per_s:6.0f}/s "
                    f"({archive_n.per_s / bare.per_s:.2f}x bare, {archive_n.cpu_ms * 1000:3.0f} us CPU/msg)",
                    flush=True,
                )
            views = _page_views(site_id, args.page_views)
            viewed = await _consume_round(
                tree, settings, publisher, poll_engine, views, page_views, "archive,closer", log_dir
            )
            emails = []
            for n in procs:
                mailed = await _email_round(tree, settings, publisher, sink, site_id, args.transcripts, n, log_dir)
                emails.append(mailed)
            rows.append((label, bare, archive, viewed, emails, _load()))
            print(_row(label, bare, archive, viewed, emails, _load()), flush=True)

        # --- end to end: "end" published -> transcript email at the SMTP server ----------
        latencies = await _close_to_email(settings, engine, redis, publisher, site_id, sink, args.chats)
    finally:
        await sink.stop()  # also when a round fails: never leave the sink running
    shutil.rmtree(log_dir, ignore_errors=True)
    await publisher.close()
    await redis.aclose()
    engine.dispose()
    poll_engine.dispose()

    print()
    print(f"sink: {sink.name}; {args.messages} ChatMessages; {args.transcripts} Transcripts", end="")
    print(f" of {LINES_PER_TRANSCRIPT} lines")
    for connections, rate in ceilings.items():
        print(f"bare aiosmtplib to the sink ({connections} connections): {rate:8.1f} mails/s")
    # "CPU ratio": bare consume's CPU per message over the archive's, the ratio the two
    # rates tend to when both are bound by their own process's CPU; the rates' own ratio
    # also moves with whatever else the machine runs (RabbitMQ's share of the cores).
    header = f"{'code':6s} {'bare consume':>12s} {'CPU/msg':>7s} {'archive':>9s} {'ratio':>5s} {'CPU/msg':>7s}"
    header += f" {'CPU ratio':>9s}"
    header += f" {'page views':>10s} {'CPU/view':>8s}"
    for n in procs:
        header += f"  {'emailed, ' + str(n) + ' proc':>17s} {'CPU/mail':>8s}"
    print(header + "  load average")
    for row in rows:
        print(_row(*row))
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"operator 'end' -> transcript email at SMTP: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
        f"({len(latencies)} chats of 4 lines, one at a time, all consumers in one worker)"
    )
    print(f"load average (1, 5, 15 min) at the end: {_load()}")


def _row(label: str, bare: _Rate, archive: _Rate, viewed: _Rate, emails: list[_Rate], load: str) -> str:
    line = f"{label:6s} {bare.per_s:10.0f}/s {bare.cpu_ms * 1000:4.0f} us {archive.per_s:7.0f}/s"
    line += f" {archive.per_s / bare.per_s:4.2f}x {archive.cpu_ms * 1000:4.0f} us {bare.cpu_ms / archive.cpu_ms:8.2f}x"
    line += f" {viewed.per_s:8.0f}/s {viewed.cpu_ms * 1000:5.0f} us"
    for e in emails:
        line += f"  {e.per_s:15.1f}/s {e.cpu_ms:5.2f} ms"
    return line + f"  {load}"


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


async def _close_to_email(
    settings: Settings,
    engine: sa.Engine,
    redis: Any,
    publisher: Bus,
    site_id: str,
    sink: _Sink,
    chats: int,
) -> list[float]:
    """Seconds from publishing an operator's "end" to the sink accepting the transcript
    email, per chat (each chat's lines published and archived first; one chat at a
    time, so the sink's next mail is this chat's)."""
    worker = Worker.build(settings, await Bus.connect(settings, "bench-e2e"), redis, engine)
    await worker.start()
    log = ConversationLog(redis, settings)
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
        sink.reset()
        started = time.perf_counter()
        await publisher.publish(topology.OPERATOR, f"{site_id}.action", end)
        while sink.count == 0:
            await asyncio.wait_for(sink.wait_change(), 30)
        latencies.append(time.perf_counter() - started)
    await worker.stop()
    return latencies


async def _bare_smtp(
    settings: Settings, site: Any, items: list[tuple[str, Any]], sink: _Sink, connections: int
) -> float:
    """Mails per second, first to last, for plain aiosmtplib sends of the same
    transcripts, rendered beforehand, over ``connections`` connections of several
    mails each (the sink's ceiling for this client library)."""
    mails = [rendering.transcript_email(struct, site, settings.mail_from) for _, struct in items]
    sink.reset()

    async def connection(share: list[Any]) -> None:
        client = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port)
        await client.connect()
        for mail in share:
            await client.sendmail(mail.sender, mail.recipients, mail.data)
        await client.quit()

    sending = asyncio.gather(*(connection(mails[k::connections]) for k in range(connections)))
    while sink.count == 0:
        await sink.wait_change()
    first, started = sink.count, time.perf_counter()
    while sink.count < len(mails):
        await sink.wait_change()
    rate = (sink.count - first) / (time.perf_counter() - started)
    await sending
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    # 5000 messages: enough batches (25 of 200) for a steady rate, seconds per round.
    parser.add_argument("--messages", type=int, default=5000)
    # 1000 transcripts: a few seconds of steady sending at the target of 300/s.
    parser.add_argument("--transcripts", type=int, default=1000)
    parser.add_argument("--archive-processes", type=int, default=1, help="also time the archive in N processes")
    # Page views (each a VisitorEvent ARRIVED and a PageView, as a widget boot publishes).
    parser.add_argument("--page-views", type=int, default=2000)
    # 30 chats, one at a time: enough for a p50; the p99 of 30 is the slowest one or two.
    parser.add_argument("--chats", type=int, default=30)
    parser.add_argument("--email-processes", default="1,2", help="email worker processes per round, e.g. 1,2")
    parser.add_argument("--sink", choices=("auto", "postfix", "python"), default="auto")
    parser.add_argument("--before", help="a copy of older code: rounds alternate before, after, after, before")
    args = parser.parse_args()
    # A steady rate is timed from the first committed batch (HABLA_ARCHIVE_BATCH_SIZE,
    # 200) to the last: fewer than a few batches leave nothing to time.
    if args.messages < 1000 or args.page_views < 500:
        parser.error("--messages must be at least 1000 and --page-views at least 500 (several batches)")

    # A sandbox of its own (vhost, Redis prefix, database with a random tag): the
    # servers are shared with test runs, so a fixed name could be someone else's.
    with sandbox.sandboxed("bench-worker", log_level="WARNING") as settings:
        asyncio.run(_bench(args, settings))


if __name__ == "__main__":
    main()
