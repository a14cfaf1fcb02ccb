"""Consumer of transcript_worker.transcripts: ConversationClosed → Transcript, stored
once and published once on habla.transcripts.

The Transcript is built once every line the log holds up to last_seq is archived
(waiting with backoff up to HABLA_TRANSCRIPT_WAIT_S, then archiving what is missing
from the log itself; anything still missing then is named in a gap note). It is
stored under the conversation id (primary key) before it is published, so a repeat
publishes the stored copy, never a second different one; a Redis marker after the
publish makes repeats (redeliveries, repair passes) publish nothing.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, topology
from libs.common.lease import Lease, LeaseBusy
from libs.common.messaging import Envelope, Permanent
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory, UnknownSite
from services.transcript_worker import conversation_store
from services.transcript_worker.closing import LOCK_TTL_MS, LOCK_WAIT_S, MARKER_TTL_S, Publisher
from services.transcript_worker.transcript_builder import TranscriptBuilder, UnknownConversation

log = logging.getLogger(__name__)


class TranscriptsConsumer:
    spec = topology.TRANSCRIPTS_BUILD
    manual_ack = False

    def __init__(
        self,
        engine: sa.Engine,
        redis: aioredis.Redis,
        sites: SiteDirectory,
        publisher: Publisher,
        settings: Settings,
    ) -> None:
        self._engine = engine
        self._redis = redis
        self._sites = sites
        self._publisher = publisher
        self._settings = settings
        self._builder = TranscriptBuilder(engine, redis, settings)

    def published_key(self, conversation_id: str) -> str:
        return self._settings.redis_key("worker", "transcript-published", conversation_id)

    async def consume(self, envelope: Envelope) -> None:
        closed = envelope.struct
        if envelope.type_name != "ConversationClosed":
            raise Permanent(f"expected ConversationClosed, got {envelope.type_name}")
        conversation_id = closed.conversation_id
        if await self._redis.exists(self.published_key(conversation_id)):
            return
        try:
            site = await self._sites.get(closed.site_id)
        except UnknownSite as exc:
            raise Permanent(str(exc)) from exc
        lock = Lease(self._redis, self._settings.redis_key("worker", "transcript", conversation_id), LOCK_TTL_MS)
        # Another worker holding it past the wait is alive and handling an identical copy;
        # if it dies, its own unacknowledged copy comes back. So this copy can go.
        try:
            async with lock.held(LOCK_WAIT_S):
                if await self._redis.exists(self.published_key(conversation_id)):
                    return  # the holder we waited for published it
                body = await asyncio.to_thread(conversation_store.transcript_body, self._engine, conversation_id)
                if body is None:
                    gaps = await self._builder.wait_until_archived(closed, self._settings.transcript_wait_s)
                    try:
                        transcript = await self._builder.build(closed, site.name, dict(site.operators), gaps)
                    except UnknownConversation as exc:
                        raise Permanent(str(exc)) from exc
                    await asyncio.to_thread(
                        conversation_store.store_transcript,
                        self._engine,
                        conversation_id,
                        closed.site_id,
                        codec.encode(transcript),
                    )
                    body = await asyncio.to_thread(conversation_store.transcript_body, self._engine, conversation_id)
                transcript = codec.decode("Transcript", body or b"")
                await self._publisher.publish(topology.TRANSCRIPTS, "", transcript, message_id=conversation_id)
                await self._redis.set(self.published_key(conversation_id), "1", ex=MARKER_TTL_S)
        except LeaseBusy:
            log.info(
                "another worker is building this transcript; duplicate dropped", extra={"conversation": conversation_id}
            )
