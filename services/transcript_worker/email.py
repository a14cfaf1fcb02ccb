"""Consumer of transcript_worker.email: transcripts and offline notes to the site's
transcript addresses, in batches.

Deliveries are gathered (up to EMAIL_BATCH_SIZE; whatever arrived while the previous
batch was sending) and handled together: one Redis round trip takes a lease per mail,
one MySQL transaction finds those emailed already (storing new offline notes), each
mail is rendered, the batch goes out over the Mailer's pooled connections (several
mails per SMTP session), one transaction records which the server accepted, and only
then is each delivery settled on its own: acknowledged (accepted, or nothing to
send), retried with the queue's backoff (SMTP 4xx, server unreachable), or
dead-lettered with its reason (5xx refusal, unknown site). A failure part-way through
a batch (a connection dropped) settles each mail by its own outcome: those accepted
before it are recorded and acknowledged, never sent again; the others are retried.

Sent once in normal operation: ``emailed_at`` is checked before and set after sending.
A worker killed between the SMTP server's "250 OK" and that update sends the email
again on redelivery: at most one duplicate, with the same Message-ID (so does a
connection lost after the server took a mail but before its reply arrived).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
from prometheus_client import Counter

from libs.common import topology
from libs.common.lease import Lease, LeaseBusy, LeaseSet
from libs.common.messaging import Envelope, Permanent
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig, SiteDirectory, UnknownSite
from services.transcript_worker import conversation_store, rendering
from services.transcript_worker.batching import BACKOFF_S, Batcher
from services.transcript_worker.closing import LOCK_TTL_MS, LOCK_WAIT_S
from services.transcript_worker.mailer import Mailer, MailRejected
from services.transcript_worker.rendering import OutgoingMail

log = logging.getLogger(__name__)

EMAILED = Counter("habla_worker_emails_sent_total", "Emails accepted by the SMTP server", ["kind"])

KINDS = {"Transcript": "transcript", "OfflineMessage": "offline"}
# Mails per batch: a dozen per pooled connection (4), so each SMTP session carries
# several; the prefetch holds two batches, one filling while the other sends.
EMAIL_BATCH_SIZE = 50
# How long a first delivery waits for company: short, since a batch that is sending
# gathers the next one meanwhile anyway; a lone transcript is hardly delayed.
EMAIL_BATCH_WAIT_S = 0.01
# On shutdown, how long a batch being sent may take to finish (under docker's 10 s).
STOP_GRACE_S = 8.0


@dataclass
class _Job:
    envelope: Envelope
    kind: str  # transcript or offline
    key: str  # conversation id or note message id
    settled: bool = False
    mail: OutgoingMail | None = None

    @property
    def struct(self) -> Any:
        return self.envelope.struct


class EmailConsumer:
    spec = topology.EMAIL
    manual_ack = True
    batch_acks = True

    def __init__(
        self, engine: sa.Engine, redis: aioredis.Redis, sites: SiteDirectory, mailer: Mailer, settings: Settings
    ) -> None:
        self._engine = engine
        self._redis = redis
        self._sites = sites
        self._mailer = mailer
        self._settings = settings
        self.prefetch = 2 * EMAIL_BATCH_SIZE
        self.batcher: Batcher[Envelope] = Batcher(
            self._flush, max_size=EMAIL_BATCH_SIZE, max_wait_s=EMAIL_BATCH_WAIT_S, name="email"
        )

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        # A batch being sent finishes (so each of its mails is recorded and settled);
        # a dozen mails per connection take well under the grace on a healthy server.
        await self.batcher.close(grace_s=STOP_GRACE_S)

    async def consume(self, envelope: Envelope) -> None:
        if envelope.type_name not in KINDS:
            raise Permanent(f"cannot email a {envelope.type_name}")
        self.batcher.add(envelope)

    def _lock_key(self, job: _Job) -> str:
        return self._settings.redis_key("worker", "emailing", job.envelope.type_name, job.key)

    async def _flush(self, envelopes: list[Envelope]) -> None:
        """Send a batch and settle every delivery in it; never raises (the Batcher
        would retry the whole batch): whatever fails unexpectedly is retried alone."""
        jobs = [_Job(e, KINDS[e.type_name], _key(e)) for e in envelopes]
        try:
            await self._handle(jobs)
        except Exception as exc:
            log.exception("email batch failed", extra={"mails": len(jobs)})
            for job in jobs:
                if not job.settled:
                    await _settle(job, "retry", f"{exc.__class__.__name__}: {exc}", exc)

    async def _handle(self, jobs: list[_Job]) -> None:
        # Two copies of one mail in a batch (a republish, a redelivery): the first is
        # handled, the other settles after it (its twin is sent, retried or dead).
        first: dict[str, _Job] = {}
        copies = []
        for job in jobs:
            lock_key = self._lock_key(job)
            if lock_key in first:
                copies.append(job)
            else:
                first[lock_key] = job
        # A copy being sent by another worker (or still locked by one that died) waits
        # for that lease as one mail used to; the rest of the batch goes on meanwhile.
        async with LeaseSet(self._redis, list(first), LOCK_TTL_MS).held() as held:
            mine = [job for key, job in first.items() if key in held]
            busy = [job for key, job in first.items() if key not in held]
            results = await asyncio.gather(
                self._deliver(mine), *(self._after_holder(job) for job in busy), return_exceptions=True
            )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for job in copies:
            await _settle(job, "ack")

    async def _after_holder(self, job: _Job) -> None:
        # The wait covers one SMTP attempt (its timeout) plus a dead holder's lock.
        lock = Lease(self._redis, self._lock_key(job), LOCK_TTL_MS)
        try:
            async with lock.held(self._settings.smtp_timeout_s + LOCK_WAIT_S):
                await self._deliver([job])
        except LeaseBusy:
            # A live worker is sending an identical copy (if it dies, its own copy
            # comes back unacknowledged): this one can go.
            log.info("another worker is sending this email; duplicate dropped", extra={"key": job.key})
            await _settle(job, "ack")

    async def _deliver(self, jobs: list[_Job]) -> None:
        """Check, render, send, record and settle ``jobs`` (leases held)."""
        if not jobs:
            return
        sites: dict[str, SiteConfig | UnknownSite] = {}
        for job in jobs:
            site_id = job.struct.site_id
            if site_id not in sites:
                try:
                    sites[site_id] = await self._sites.get(site_id)
                except UnknownSite as exc:
                    sites[site_id] = exc
            unknown = sites[site_id]
            if isinstance(unknown, UnknownSite):
                log.warning("message rejected", extra={"queue": self.spec.name, "reason": str(unknown)})
                await _settle(job, "dead", f"rejected: {unknown}")
        jobs = [job for job in jobs if not job.settled]
        emailed_transcripts, emailed_notes = await asyncio.to_thread(
            conversation_store.emailed_already,
            self._engine,
            [job.key for job in jobs if job.kind == "transcript"],
            [job.struct for job in jobs if job.kind == "offline"],
        )
        for job in jobs:
            if job.key in (emailed_transcripts if job.kind == "transcript" else emailed_notes):
                await _settle(job, "ack")
                continue
            site = sites[job.struct.site_id]
            assert isinstance(site, SiteConfig)
            if not rendering.recipients(site.transcript_emails):
                log.info("site has no transcript address; not emailed", extra={"site": site.site_id, "kind": job.kind})
                await _settle(job, "ack")
                continue
            if job.kind == "transcript" and not job.struct.messages:
                # Opened and ended without a word (e.g. the visitor pressed "end" at
                # once): published for downstream consumers, but nothing to read in a mail.
                log.info("empty conversation; not emailed", extra={"conversation": job.key})
                await _settle(job, "ack")
                continue
            try:
                job.mail = self._render(job, site)
            except Exception as exc:  # a bug shown by one message: retried, then dead-lettered
                log.exception("cannot render email", extra={"key": job.key})
                await _settle(job, "retry", f"{exc.__class__.__name__}: {exc}", exc)
        sending = [job for job in jobs if job.mail is not None and not job.settled]
        outcomes = await self._mailer.send_many([job.mail for job in sending if job.mail is not None])
        accepted = [job for job, outcome in zip(sending, outcomes, strict=True) if outcome is None]
        await self._record(accepted)
        settling = []  # together: the acks of a batch leave as one multiple ack (batch_acks)
        for job, outcome in zip(sending, outcomes, strict=True):
            if outcome is None:
                EMAILED.labels(job.kind).inc()
                settling.append(_settle(job, "ack"))
            elif isinstance(outcome, MailRejected):
                log.warning("email refused for good", extra={"key": job.key, "reason": str(outcome)})
                settling.append(_settle(job, "dead", f"rejected: {outcome}"))
            else:  # MailUnavailable: the queue's backoff, then the dead-letter queue
                settling.append(_settle(job, "retry", f"{outcome.__class__.__name__}: {outcome}", outcome))
        await asyncio.gather(*settling)

    def _render(self, job: _Job, site: SiteConfig) -> OutgoingMail:
        if job.kind == "transcript":
            return rendering.transcript_email(job.struct, site, self._settings.mail_from)
        return rendering.offline_email(job.struct, site, self._settings.mail_from)

    async def _record(self, accepted: list[_Job]) -> None:
        """Record mails the server accepted, trying through a short MySQL outage. If it
        cannot, they are acknowledged anyway: they were sent, and a redelivery would
        only send them again."""
        if not accepted:
            return
        transcripts = [job.key for job in accepted if job.kind == "transcript"]
        notes = [job.key for job in accepted if job.kind == "offline"]
        for delay in (*BACKOFF_S, None):
            try:
                await asyncio.to_thread(conversation_store.mark_emailed, self._engine, transcripts, notes)
                return
            except Exception:
                if delay is None:
                    log.exception("emails sent but not recorded as sent", extra={"mails": len(accepted)})
                    return
                await asyncio.sleep(delay)


def _key(envelope: Envelope) -> str:
    struct = envelope.struct
    return str(struct.conversation_id if envelope.type_name == "Transcript" else struct.message_id)


async def _settle(job: _Job, action: str, reason: str = "", error: BaseException | None = None) -> None:
    """Acknowledge, retry or dead-letter one delivery. If the channel is gone the
    broker redelivers it, which the emailed_at check makes harmless."""
    job.settled = True
    try:
        if action == "ack":
            await job.envelope.ack()
        elif action == "dead":
            await job.envelope.dead_letter(reason)
        else:
            await job.envelope.retry(reason, error)
    except Exception:
        log.warning("could not settle an email delivery; the broker will redeliver it", extra={"key": job.key})
