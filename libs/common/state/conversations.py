"""Conversation logs: an ordered list per conversation with gap-free sequence numbers.

Entry n of the list has seq n (1-based), so "everything after seq N" is one LRANGE and
the sequence can never have a gap: a number is only ever taken by the append that
pushes the entry, inside one Lua script (atomic in Redis). The client's message id
maps to its seq, so a retried send returns the first seq and appends nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from libs.common.settings import Settings

# Logs are the visitor-facing copy; MySQL holds history. Seven days after the last
# line covers a visitor who returns within a week to a still-open widget.
LOG_TTL_S = 7 * 24 * 3600

# KEYS[1] = log list, KEYS[2] = message-id -> seq hash
# ARGV[1] = message id, ARGV[2] = entry JSON without seq, ARGV[3] = ttl
# Returns {seq, 1 if newly appended else 0}.
_APPEND = """
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  return {tonumber(existing), 0}
end
local seq = redis.call('LLEN', KEYS[1]) + 1
local entry = cjson.decode(ARGV[2])
entry['seq'] = seq
redis.call('RPUSH', KEYS[1], cjson.encode(entry))
redis.call('HSET', KEYS[2], ARGV[1], seq)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {seq, 1}
"""


def chat_line(sender: str, body: str, sent_at_ms: int, operator_name: str | None = None) -> dict[str, Any]:
    """A log entry for a line someone wrote; sender is "visitor" or "operator". The
    widget renders these fields (as text), so every writer builds them here."""
    return {"kind": "message", "sender": sender, "body": body, "sent_at_ms": sent_at_ms, "operator_name": operator_name}


def system_line(body: str, sent_at_ms: int) -> dict[str, Any]:
    """A log entry Habla itself writes ("The chat has ended.")."""
    return {"kind": "system", "sender": "system", "body": body, "sent_at_ms": sent_at_ms, "operator_name": None}


def receipt_line(message_id: str, at_ms: int) -> dict[str, Any]:
    """A log entry saying the operator's client received the visitor's line
    ``message_id`` (XEP-0184): the widget's delivery tick. Not a line of the
    conversation: transcripts and the archive leave it out (see ``shown``)."""
    return {
        "kind": "receipt",
        "sender": "operator",
        "body": "",
        "sent_at_ms": at_ms,
        "operator_name": None,
        "receipt_for": message_id,
    }


def shown(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines of a log as a person reads them: receipts left out."""
    return [entry for entry in entries if entry.get("kind") != "receipt"]


@dataclass(frozen=True)
class Appended:
    seq: int
    created: bool  # False: the message id was already in the log (a retry)


class ConversationLog:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._append = redis.register_script(_APPEND)

    def _keys(self, conversation_id: str) -> list[str]:
        return [
            self._settings.redis_key("conv", conversation_id, "log"),
            self._settings.redis_key("conv", conversation_id, "ids"),
        ]

    async def append(self, conversation_id: str, message_id: str, entry: dict[str, Any]) -> Appended:
        """Append ``entry`` (JSON-able, without "seq") unless ``message_id`` is already there."""
        payload = {**entry, "message_id": message_id}
        payload.pop("seq", None)
        seq, created = await self._append(
            keys=self._keys(conversation_id), args=[message_id, json.dumps(payload), LOG_TTL_S]
        )
        return Appended(int(seq), bool(created))

    async def after(self, conversation_id: str, after_seq: int, limit: int = 500) -> list[dict[str, Any]]:
        """Entries with seq > after_seq, oldest first, at most ``limit``."""
        start = max(after_seq, 0)
        raw = await self._redis.lrange(self._keys(conversation_id)[0], start, start + limit - 1)
        return [json.loads(item) for item in raw]

    async def last_seq(self, conversation_id: str) -> int:
        return int(await self._redis.llen(self._keys(conversation_id)[0]))

    async def seq_of(self, conversation_id: str, message_id: str) -> int | None:
        raw = await self._redis.hget(self._keys(conversation_id)[1], message_id)
        return int(raw) if raw is not None else None
