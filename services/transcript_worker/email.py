"""Consumer of transcript_worker.email: transcripts and offline notes to the site's
transcript addresses.

Sent once in normal operation: ``emailed_at`` is checked before and set after sending.
A worker killed between the SMTP server's "250 OK" and that update sends the email
again on redelivery: at most one duplicate, with the same Message-ID. SMTP trouble
is retried with the queue's backoff; a 5xx refusal is dead-lettered with its reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
from prometheus_client import Counter

from libs.common import topology
from libs.common.lease import Lease, LeaseBusy
from libs.common.messaging import Envelope, Permanent
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig, SiteDirectory, UnknownSite
from services.transcript_worker import conversation_store, rendering
from services.transcript_worker.closing import LOCK_TTL_MS, LOCK_WAIT_S
from services.transcript_worker.mailer import Mailer, MailRejected

log = logging.getLogger(__name__)

EMAILED = Counter("habla_worker_emails_sent_total", "Emails accepted by the SMTP server", ["kind"])


class EmailConsumer:
    spec = topology.EMAIL
    manual_ack = False

    def __init__(
        self, engine: sa.Engine, redis: aioredis.Redis, sites: SiteDirectory, mailer: Mailer, settings: Settings
    ) -> None:
        self._engine = engine
        self._redis = redis
        self._sites = sites
        self._mailer = mailer
        self._settings = settings

    async def consume(self, envelope: Envelope) -> None:
        send: Callable[[Any], Awaitable[None]]
        if envelope.type_name == "Transcript":
            key, send = envelope.struct.conversation_id, self._transcript
        elif envelope.type_name == "OfflineMessage":
            key, send = envelope.struct.message_id, self._offline
        else:
            raise Permanent(f"cannot email a {envelope.type_name}")
        # Two copies of one message (a republish, a redelivery) handled at once would
        # both find "not emailed yet": the second waits for the first, then finds it sent.
        # The wait covers one SMTP attempt (its timeout) plus a dead holder's lock.
        lock = Lease(self._redis, self._settings.redis_key("worker", "emailing", envelope.type_name, key), LOCK_TTL_MS)
        try:
            async with lock.held(self._settings.smtp_timeout_s + LOCK_WAIT_S):
                await send(envelope.struct)
        except LeaseBusy:
            # A live worker is sending an identical copy (if it dies, its own copy
            # comes back unacknowledged): this one can go.
            log.info("another worker is sending this email; duplicate dropped", extra={"key": key})

    async def _site(self, site_id: str) -> SiteConfig:
        try:
            return await self._sites.get(site_id)
        except UnknownSite as exc:
            raise Permanent(str(exc)) from exc

    async def _transcript(self, transcript: Any) -> None:
        conversation_id: str = transcript.conversation_id
        site = await self._site(transcript.site_id)
        if await asyncio.to_thread(conversation_store.transcript_emailed, self._engine, conversation_id):
            return
        if not rendering.recipients(site.transcript_emails):
            log.info("site has no transcript address; not emailed", extra={"site": site.site_id})
            return
        if not transcript.messages:
            # Opened and ended without a word (e.g. the visitor pressed "end" at once):
            # still published for downstream consumers, but nothing to read in a mail.
            log.info("empty conversation; not emailed", extra={"conversation": conversation_id})
            return
        await self._send(rendering.transcript_email(transcript, site, self._settings.mail_from), "transcript")
        await asyncio.to_thread(conversation_store.mark_transcript_emailed, self._engine, conversation_id)

    async def _offline(self, note: Any) -> None:
        site = await self._site(note.site_id)
        if await asyncio.to_thread(conversation_store.save_offline_message, self._engine, note):
            return
        if not rendering.recipients(site.transcript_emails):
            log.info("site has no transcript address; offline note kept in MySQL only", extra={"site": site.site_id})
            return
        await self._send(rendering.offline_email(note, site, self._settings.mail_from), "offline")
        await asyncio.to_thread(conversation_store.mark_offline_emailed, self._engine, note.message_id)

    async def _send(self, message: EmailMessage, kind: str) -> None:
        try:
            await self._mailer.send(message)
        except MailRejected as exc:
            raise Permanent(str(exc)) from exc
        # MailUnavailable propagates: the queue retries it with backoff, then dead-letters.
        EMAILED.labels(kind).inc()
        log.info("email sent", extra={"kind": kind, "message_id": message["Message-ID"]})
