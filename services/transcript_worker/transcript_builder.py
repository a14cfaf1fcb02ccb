"""Building a Transcript from the archive, once every line is there (no AMQP here)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, plausible
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog
from services.transcript_worker import archive_store, conversation_store
from services.transcript_worker.archive_store import Batch, to_ms

log = logging.getLogger(__name__)

# A transcript lists at most this many pages: a long visit's click trail is noise in
# an email, and the Thrift message stays small.
MAX_PAGES = 50
# Backoff while waiting for the archive: first checks come quickly (an archive batch
# commits within HABLA_ARCHIVE_BATCH_MS), then every 2 s.
FIRST_WAIT_S, MAX_WAIT_STEP_S = 0.05, 2.0

_SENDER_KINDS = {"visitor": 1, "operator": 2, "system": 3}


class UnknownConversation(LookupError):
    pass


# The log is read in pages of this many lines (one ZRANGE each).
LOG_PAGE = 500


class TranscriptBuilder:
    def __init__(self, engine: sa.Engine, redis: aioredis.Redis, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._log = ConversationLog(redis, settings)

    async def _logged_lines(self, closed: Any) -> list[dict[str, Any]]:
        """The log's chat lines up to last_seq, as many as the log really holds (never a
        range built from last_seq: a number someone else chose must not size our work)."""
        last_seq = plausible.seq(closed.last_seq, "last_seq")
        lines: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await self._log.after(closed.conversation_id, after, LOG_PAGE)
            for entry in page:
                seq = entry.get("seq")
                if not isinstance(seq, int) or seq > last_seq:
                    return lines
                if entry.get("kind") == "message" and entry.get("message_id"):
                    lines.append(entry)
                after = seq
            if len(page) < LOG_PAGE:
                return lines

    async def missing(self, closed: Any) -> list[int]:
        """Sequence numbers of lines in the log (up to last_seq) the archive lacks.

        Lines that never travel on RabbitMQ (system lines written straight into the
        log, like "The chat has ended.") are not waited for; everything the frontend
        and gateway publish as ChatMessage is. A log that is gone (expired, or lost by
        Redis) leaves nothing to wait for: the archive is then the whole truth."""
        lines = await self._logged_lines(closed)
        if not lines:
            return []
        ids = [str(e["message_id"]) for e in lines]
        archived = await asyncio.to_thread(conversation_store.archived_ids, self._engine, closed.conversation_id, ids)
        return [int(e["seq"]) for e in lines if str(e["message_id"]) not in archived]

    async def wait_until_archived(self, closed: Any, wait_s: float) -> list[int]:
        """Wait (bounded by ``wait_s``) until every logged line is archived; then archive
        what is still missing from the log itself. Returns the seqs still missing after
        that (the transcript shows a gap note for them), normally none."""
        deadline = time.monotonic() + wait_s
        step = FIRST_WAIT_S
        while True:
            missing = await self.missing(closed)
            if not missing:
                return []
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(step)
            step = min(step * 2, MAX_WAIT_STEP_S)
        # Lines in the log that never reached RabbitMQ (a frontend or gateway died
        # between appending and publishing) are archived from the log.
        await self._archive_from_log(closed, missing)
        missing = await self.missing(closed)
        if missing:
            log.warning(
                "transcript built with a gap",
                extra={"conversation": closed.conversation_id, "missing": _shown(missing)},
            )
        return missing

    async def _archive_from_log(self, closed: Any, missing: list[int]) -> bool:
        """Archive the missing lines from the Redis log; False if the log lacks them.
        Their message ids are the ones the publisher would have used, so a late copy
        arriving through the archive afterwards is ignored as a repeat."""
        wanted = set(missing)
        entries = [e for e in await self._logged_lines(closed) if int(e["seq"]) in wanted]
        if not entries:
            return False
        batch = Batch()
        for e in entries:
            batch.add(
                codec.ChatMessage(
                    message_id=str(e["message_id"]),
                    conversation_id=closed.conversation_id,
                    site_id=closed.site_id,
                    visitor_id=closed.visitor_id,
                    sender=_SENDER_KINDS.get(str(e.get("sender")), 3),
                    body=str(e.get("body") or ""),
                    sent_at_ms=int(e.get("sent_at_ms") or closed.closed_at_ms),
                    seq=int(e["seq"]),
                    operator_name=e.get("operator_name"),
                    replaces_message_id=e.get("replaces"),
                ),
                str(e["message_id"]),
            )
        await asyncio.to_thread(archive_store.write, self._engine, batch)
        log.warning(
            "lines archived from the conversation log (never published)",
            extra={"conversation": closed.conversation_id, "seqs": ",".join(str(int(e["seq"])) for e in entries)},
        )
        return True

    async def build(
        self, closed: Any, site_name: str, operator_names: dict[str, str], gaps: list[int] | None = None
    ) -> Any:
        # Pages of this visit: from one session timeout before the first line.
        lookback = datetime.timedelta(seconds=self._settings.session_ttl_s)
        rows = await asyncio.to_thread(
            conversation_store.transcript_rows, self._engine, closed.conversation_id, lookback, MAX_PAGES
        )
        if rows is None:
            raise UnknownConversation(f"conversation {closed.conversation_id} is not in the archive")
        conv = rows.conversation
        pages = rows.pages
        lines = _in_order([_chat_message(m, closed, operator_names) for m in rows.messages])
        if gaps:
            lines.append(_gap_note(closed, gaps))
        jids: list[str] = []
        for jid in [conv.operator_jid, *(m.operator_jid for m in lines), closed.operator_jid]:
            if jid and jid not in jids:
                jids.append(jid)
        visitor = rows.visitor
        return codec.Transcript(
            conversation_id=closed.conversation_id,
            site_id=closed.site_id,
            visitor_id=closed.visitor_id,
            visitor_name=visitor.name if visitor else None,
            visitor_email=visitor.email if visitor else None,
            visitor_phone=visitor.phone if visitor else None,
            referrer=(visitor.referrer if visitor else None) or next((p.referrer for p in pages if p.referrer), None),
            pages=[codec.TranscriptPage(url=p.url, title=p.title, viewed_at_ms=to_ms(p.viewed_at)) for p in pages],
            messages=lines,
            operator_jids=jids,
            started_at_ms=to_ms(conv.started_at),
            closed_at_ms=int(closed.closed_at_ms),
            reason=closed.reason,
            site_name=site_name,
        )


def _chat_message(row: Any, closed: Any, operator_names: dict[str, str]) -> Any:
    return codec.ChatMessage(
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        site_id=closed.site_id,
        visitor_id=closed.visitor_id,
        sender=_SENDER_KINDS.get(row.sender, 3),
        operator_jid=row.operator_jid,
        body=row.body,
        sent_at_ms=to_ms(row.sent_at),
        seq=int(row.seq),
        operator_name=operator_names.get(row.operator_jid or "") or None,
        internal=bool(row.internal),
        replaces_message_id=row.replaces_message_id,
    )


def _shown(seqs: list[int]) -> str:
    return ", ".join(str(s) for s in seqs[:10]) + (f" and {len(seqs) - 10} more" if len(seqs) > 10 else "")


def _gap_note(closed: Any, gaps: list[int]) -> Any:
    """A system line at the end of the transcript saying which lines it lacks."""
    return codec.ChatMessage(
        message_id=f"{closed.conversation_id}:gap"[:64],
        conversation_id=closed.conversation_id,
        site_id=closed.site_id,
        visitor_id=closed.visitor_id,
        sender=codec.SenderKind.SYSTEM,
        body=f"{len(gaps)} line(s) of this conversation could not be archived in time (seq {_shown(gaps)}).",
        sent_at_ms=int(closed.closed_at_ms),
        seq=0,
    )


def _in_order(lines: list[Any]) -> list[Any]:
    """Chat lines in seq order, with internal notes (seq 0) placed by time among them."""
    ordered = sorted((m for m in lines if not m.internal), key=lambda m: m.seq)
    for note in sorted((m for m in lines if m.internal), key=lambda m: m.sent_at_ms):
        index = next((i for i, m in enumerate(ordered) if m.sent_at_ms > note.sent_at_ms), len(ordered))
        ordered.insert(index, note)
    return ordered
