"""The archive's site check (real Redis and MariaDB through SiteDirectory): deliveries
that arrive together share one lookup of their site, each still gets its own answer
(kept in the batch, or rejected when the site is unknown), and a known site is not
looked up again while it is remembered."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec
from libs.common.messaging import Envelope, Permanent
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig, SiteDirectory
from services.transcript_worker.archive import ArchiveConsumer
from tests.transcript_worker.conftest import now_ms


class _CountingSites(SiteDirectory):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lookups: list[str] = []

    async def get(self, site_id: str) -> SiteConfig:
        self.lookups.append(site_id)
        return await super().get(site_id)


def _delivery(site_id: str) -> Envelope:
    line = codec.ChatMessage(
        message_id=uuid.uuid4().hex,
        conversation_id=uuid.uuid4().hex,
        site_id=site_id,
        visitor_id="v-site-check",
        sender=codec.SenderKind.VISITOR,
        body="hello",
        sent_at_ms=now_ms(),
        seq=1,
    )
    # Never settled here: consume() only checks the site and hands it to the batcher.
    return Envelope(line, "ChatMessage", line.message_id, "", "", 0, False, cast(Any, None), cast(Any, None))


async def test_deliveries_arriving_together_share_one_lookup(
    engine: sa.Engine, redis_client: aioredis.Redis, settings: Settings, site: SiteConfig
) -> None:
    sites = _CountingSites(redis_client, engine, settings)
    archive = ArchiveConsumer(engine, sites, settings)
    unknown = "9999-99999-99-9999"

    results = await asyncio.gather(
        *(archive.consume(_delivery(site.site_id)) for _ in range(100)),
        *(archive.consume(_delivery(unknown)) for _ in range(20)),
        return_exceptions=True,
    )

    assert results[:100] == [None] * 100
    assert archive.batcher.pending == 100  # every delivery of the known site is in the batch
    rejected = results[100:]
    assert all(isinstance(r, Permanent) and unknown in str(r) for r in rejected)
    assert len({id(r) for r in rejected}) == 20  # each delivery its own rejection
    assert sorted(sites.lookups) == sorted([site.site_id, unknown])

    # Remembered: later deliveries of the known site ask nobody; the unknown one is asked
    # again (it may have been created meanwhile).
    await archive.consume(_delivery(site.site_id))
    with pytest.raises(Permanent):
        await archive.consume(_delivery(unknown))
    assert sorted(sites.lookups) == sorted([site.site_id, unknown, unknown])
    assert archive.batcher.pending == 101
