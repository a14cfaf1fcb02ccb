"""Consumer of transcript_worker.archive: every visitor/operator message into MySQL.

Each delivery is checked (known site) and handed to a Batcher; a batch is written in
one transaction (at most four statements, in a thread so the event loop keeps
consuming) and only then acknowledged, message by message. While MySQL is down the
batch is retried and nothing is acknowledged, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time

import sqlalchemy as sa
from prometheus_client import Counter, Histogram

from libs.common import topology
from libs.common.messaging import Envelope, Permanent
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory, UnknownSite
from services.transcript_worker import archive_store
from services.transcript_worker.batching import Batcher

log = logging.getLogger(__name__)

ARCHIVED = Counter("habla_worker_archived_total", "Messages archived to MySQL and acknowledged")
BATCH_SECONDS = Histogram("habla_worker_archive_batch_seconds", "Time to write one archive batch")

ARCHIVED_TYPES = {"ChatMessage", "PageView", "VisitorEvent", "OperatorAction"}
# A site known to exist is not re-checked for this long: the foreign key catches a
# site deleted meanwhile, and a minute keeps Redis off the per-message path.
KNOWN_SITE_TTL_S = 60.0


class ArchiveConsumer:
    spec = topology.ARCHIVE
    manual_ack = True
    batch_acks = True

    def __init__(self, engine: sa.Engine, sites: SiteDirectory, settings: Settings) -> None:
        self._engine = engine
        self._sites = sites
        # Two batches in flight: one fills while the previous one commits (with only
        # one, consuming would stall for every commit).
        self.prefetch = 2 * settings.archive_batch_size
        self._known_sites: dict[str, float] = {}
        self._lookups: dict[str, asyncio.Future[str | None]] = {}
        self.batcher: Batcher[Envelope] = Batcher(
            self._flush,
            max_size=settings.archive_batch_size,
            max_wait_s=settings.archive_batch_ms / 1000,
            name="archive",
        )

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.close()

    async def consume(self, envelope: Envelope) -> None:
        if envelope.type_name not in ARCHIVED_TYPES:
            await envelope.ack()  # bound by routing key; nothing of ours to store
            return
        await self._check_site(envelope.struct.site_id)
        self.batcher.add(envelope)

    async def _check_site(self, site_id: str) -> None:
        if self._known_sites.get(site_id, 0) > time.monotonic():
            return
        # One lookup per site at a time: the deliveries a fresh worker (or an expired
        # entry) receives at once would otherwise each ask Redis, up to a prefetch
        # window's worth (a fresh worker's first 5,000 lines asked 428 times).
        lookup = self._lookups.get(site_id)
        if lookup is None:
            lookup = self._lookups[site_id] = asyncio.ensure_future(self._look_up(site_id))
            lookup.add_done_callback(lambda _: self._lookups.pop(site_id, None))
        # Shielded: a handler cancelled while waiting leaves the others' lookup running.
        unknown = await asyncio.shield(lookup)
        if unknown is not None:
            raise Permanent(unknown)

    async def _look_up(self, site_id: str) -> str | None:
        """None if the site may be archived, else why not (an unknown site)."""
        try:
            await self._sites.get(site_id)
        except UnknownSite as exc:
            return str(exc)
        except Exception:  # Redis trouble: the foreign key still refuses unknown sites
            log.warning("site check skipped: site directory unavailable", extra={"site": site_id})
            return None
        self._known_sites[site_id] = time.monotonic() + KNOWN_SITE_TTL_S
        return None

    async def _flush(self, envelopes: list[Envelope]) -> None:
        batch = archive_store.Batch()
        for envelope in envelopes:
            batch.add(envelope.struct, envelope.message_id)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(archive_store.write, self._engine, batch)
        except (sa.exc.IntegrityError, sa.exc.DataError):
            # One message breaks a constraint (a site deleted meanwhile) or holds data
            # MySQL refuses (too long for its column): find it and dead-letter only it;
            # retrying would hold the whole archive behind it forever.
            await self._one_by_one(envelopes)
            return
        BATCH_SECONDS.observe(time.perf_counter() - started)
        await _ack_all(envelopes)

    async def _one_by_one(self, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            single = archive_store.Batch()
            single.add(envelope.struct, envelope.message_id)
            try:
                await asyncio.to_thread(archive_store.write, self._engine, single)
            except (sa.exc.IntegrityError, sa.exc.DataError) as exc:
                await envelope.dead_letter(f"rejected: cannot archive: {str(exc.orig)[:300]}")
                continue
            await _ack_all([envelope])


async def _ack_all(envelopes: list[Envelope]) -> None:
    # Asked for together, the acks of a batch leave as one multiple ack (the consumer
    # runs with batch_acks), not a frame and a syscall each.
    results = await asyncio.gather(*(envelope.ack() for envelope in envelopes), return_exceptions=True)
    failed = sum(isinstance(result, BaseException) for result in results)
    ARCHIVED.inc(len(envelopes) - failed)
    if failed:  # channel gone: the broker redelivers, the archive ignores repeats
        log.warning("ack failed after commit; the messages will be redelivered and ignored", extra={"count": failed})
