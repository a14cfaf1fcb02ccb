"""Conversation logs: the lines of a conversation in Redis, with sequence numbers that
never go backwards.

Each line is a member of a sorted set scored by its seq, so "everything after seq N"
is one ZRANGE BYSCORE whatever the numbering. A number is only ever taken inside one
Lua script (atomic in Redis) from a counter; the client's message id maps to its seq,
so a retried send returns the first seq and appends nothing.

**Why a floor.** Redis without AOF (``appendonly no``) restarts from its last
snapshot: the counter, the lines and the message ids written since are gone, and a
plain counter would hand out seq numbers that widgets, operators and MySQL already
have for other lines. So the script remembers, per conversation, which Redis process
(``run_id``) last vouched for the counter. When it differs (Redis restarted, or a
replica took over) the counter may be stale: the caller supplies a floor (what MySQL
has archived for the conversation plus FLOOR_GAP for lines logged but not yet
archived) and numbering resumes above it. Numbers then jump (there are gaps), never
repeat. A conversation the caller has just created needs no floor (nothing can exist).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from libs.common import chatlines
from libs.common.settings import Settings
from libs.common.state.replicas import ReplicaWait

# Logs are the visitor-facing copy; MySQL holds history. Seven days after the last
# line covers a visitor who returns within a week to a still-open widget.
LOG_TTL_S = 7 * 24 * 3600
# Lines that may be in the log but not yet in MySQL when Redis loses them: the archive
# trails the log by one batch (~0.1 s) normally, by the length of a broker outage at
# worst; a conversation's lines are rate-limited to a few a second, so 1,000 covers
# minutes of outage. Numbering after a Redis restart resumes this far above MySQL.
FLOOR_GAP = 1000
# After a repair, reads look for lines archived late (in flight to the archive when
# Redis lost them) for this long: the archive trails by a batch, or by an outage of its
# own; a minute covers both without asking MySQL on every read for ever.
HOLE_WINDOW_S = 60


@dataclass(frozen=True)
class Floor:
    """What the durable store knows of a conversation when Redis may have lost some:
    the seq its numbering must resume above, and its archived lines after the log's
    last one (put back into the log, so a visitor still reads what was receipted)."""

    seq: int
    lines: list[dict[str, Any]]  # log entries with "seq" and "message_id", oldest first


# (conversation id, highest seq the log still holds) -> the floor.
FloorSource = Callable[[str, int], Awaitable[Floor]]

# Lua, shared by both scripts: does the Redis process that vouched for this
# conversation's counter still run? (KEYS[3] = meta hash)
_VOUCHED = """
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local function log_max()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then return tonumber(last[2]) end
  return 0
end
local function now_s()
  return tonumber(redis.call('TIME')[1])
end
"""

# KEYS[1] = lines (sorted set by seq), KEYS[2] = message-id -> seq hash,
# KEYS[3] = meta hash {seq = last number taken, run = run_id that vouches for it}
# ARGV[1] = message id ("" = repair only), ARGV[2] = entry JSON without seq,
# ARGV[3] = ttl, ARGV[4] = floor, or -1 if not known yet,
# ARGV[5] = JSON list of archived entries to put back (with seq and message_id)
# Returns {seq, 1 if newly appended else 0}, or {-1, log max}: "call again with a floor".
# A repair also records the hole (the log's last seq before it) and until when reads
# look for lines archived late into it.
_APPEND = (
    _VOUCHED
    + """
local function put_back(list)
  for _, old in ipairs(cjson.decode(list)) do
    if not redis.call('HGET', KEYS[2], old['message_id']) then
      redis.call('ZADD', KEYS[1], old['seq'], cjson.encode(old))
      redis.call('HSET', KEYS[2], old['message_id'], old['seq'])
    end
  end
end
if ARGV[1] ~= '' then
  local existing = redis.call('HGET', KEYS[2], ARGV[1])
  if existing then
    return {tonumber(existing), 0}
  end
end
local seq = tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')
if redis.call('HGET', KEYS[3], 'run') ~= run then
  local floor = tonumber(ARGV[4])
  if floor < 0 then
    return {-1, log_max()}
  end
  local hole = log_max()
  put_back(ARGV[5])
  local held = log_max()
  if held > seq then seq = held end
  if floor > seq then seq = floor end
  redis.call('HSET', KEYS[3], 'run', run, 'seq', seq)
  if floor > 0 then
    -- a real repair (not a conversation just created): watch the hole for late lines
    redis.call('HSET', KEYS[3], 'hole', hole, 'hole_until', now_s() + """
    + str(HOLE_WINDOW_S)
    + """)
  end
end
if ARGV[1] == '' then
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  return {seq, 0}
end
seq = seq + 1
local entry = cjson.decode(ARGV[2])
entry['seq'] = seq
redis.call('ZADD', KEYS[1], seq, cjson.encode(entry))
redis.call('HSET', KEYS[2], ARGV[1], seq)
redis.call('HSET', KEYS[3], 'seq', seq)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return {seq, 1}
"""
)

# The frontend runs the append inside its own send script, as a Lua function whose
# KEYS and ARGV are the ones above (services/rpc_frontend/lines.py).
APPEND_SCRIPT = _APPEND

# Reading: ARGV[1] = after seq, ARGV[2] = limit. Returns {1, 0, entries...}; {2, hole,
# entries...} shortly after a repair (look for lines archived late above the hole);
# or {0, log max} when no running Redis vouches for the log (repair, then read again).
# A log nobody ever wrote (no lines, no meta) reads as empty without a repair.
_READ = (
    _VOUCHED
    + """
if redis.call('HGET', KEYS[3], 'run') ~= run and (redis.call('EXISTS', KEYS[3]) == 1
    or redis.call('EXISTS', KEYS[1]) == 1) then
  return {0, log_max()}
end
local found = redis.call('ZRANGE', KEYS[1], '(' .. ARGV[1], '+inf', 'BYSCORE', 'LIMIT', 0, ARGV[2])
local until_s = tonumber(redis.call('HGET', KEYS[3], 'hole_until') or '0')
if until_s > now_s() then
  table.insert(found, 1, tonumber(redis.call('HGET', KEYS[3], 'hole') or '0'))
  table.insert(found, 1, 2)
else
  table.insert(found, 1, 0)
  table.insert(found, 1, 1)
end
return found
"""
)


# One line by message id: {seq, entry} ({seq} if the log lacks the entry), {} if the id
# is unknown. KEYS: lines, ids; ARGV[1]: the message id.
_ENTRY = """
local seq = redis.call('HGET', KEYS[2], ARGV[1])
if not seq then return {} end
local found = redis.call('ZRANGEBYSCORE', KEYS[1], seq, seq, 'LIMIT', 0, 1)
return {seq, found[1]}
"""


async def _no_floor(conversation_id: str, log_max: int) -> Floor:
    # Only for tools and tests that never outlive a Redis restart: trust the log.
    return Floor(0, [])


def chat_line(
    sender: str, body: str, sent_at_ms: int, operator_name: str | None = None, replaces: str | None = None
) -> dict[str, Any]:
    """A log entry for a line someone wrote; sender is "visitor" or "operator". The
    widget renders these fields (as text), so every writer builds them here.
    ``replaces``: this line corrects the line with that message id (XEP-0308)."""
    entry: dict[str, Any] = {
        "kind": "message",
        "sender": sender,
        "body": body,
        "sent_at_ms": sent_at_ms,
        "operator_name": operator_name,
    }
    if replaces:
        entry["replaces"] = replaces
    return entry


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
    """The lines of a log as a person reads them: receipts left out, corrections
    folded into the line they edit (its latest text, ``"edited": True``)."""
    folded = chatlines.fold(
        (entry for entry in entries if entry.get("kind") != "receipt"),
        message_id=lambda e: str(e.get("message_id", "")),
        replaces=lambda e: e.get("replaces"),
        body=lambda e: str(e.get("body", "")),
    )
    return [{**item.line, "body": item.body, "edited": item.edited} for item in folded]


@dataclass(frozen=True)
class Appended:
    seq: int
    created: bool  # False: the message id was already in the log (a retry)


class ConversationLog:
    def __init__(self, redis: aioredis.Redis, settings: Settings, floor: FloorSource | None = None) -> None:
        """``floor`` tells the lowest seq a conversation's next line may take after a
        Redis restart (``libs.common.db.history.seq_floor`` in the services)."""
        self._redis = redis
        self._settings = settings
        self._floor = floor or _no_floor
        self._checked = floor is not None  # readers without a source read as is
        self._append = redis.register_script(_APPEND)
        # HABLA_REDIS_WAIT_MS: appends are acknowledged once a replica has them.
        self._replicas = ReplicaWait(redis, settings.redis_wait_ms)
        self._read = redis.register_script(_READ)
        self._entry = redis.register_script(_ENTRY)

    def _keys(self, conversation_id: str) -> list[str]:
        # "lines", not the earlier "log" list: a key of the old type is never misread.
        return [
            self._settings.redis_key("conv", conversation_id, "lines"),
            self._settings.redis_key("conv", conversation_id, "ids"),
            self._settings.redis_key("conv", conversation_id, "meta"),
        ]

    async def append(
        self, conversation_id: str, message_id: str, entry: dict[str, Any], *, new_conversation: bool = False
    ) -> Appended:
        """Append ``entry`` (JSON-able, without "seq") unless ``message_id`` is already there.

        new_conversation=True: the caller created this conversation id a moment ago, so
        numbering starts at 1 without asking for a floor."""
        payload = {**entry, "message_id": message_id}
        payload.pop("seq", None)
        keys, body = self._keys(conversation_id), json.dumps(payload)
        floor = 0 if new_conversation else -1
        async with self._replicas.connection() as client:
            seq, created = await self._append(keys=keys, args=[message_id, body, LOG_TTL_S, floor, "[]"], client=client)
            if int(seq) < 0:
                args = [message_id, body, LOG_TTL_S, *await self._floor_args(conversation_id, int(created))]
                seq, created = await self._append(keys=keys, args=args, client=client)
            # Also for a retry (created=0): the first attempt may not have reached a replica.
            await self._replicas.confirm(client)
        return Appended(int(seq), bool(created))

    async def _floor_args(self, conversation_id: str, log_max: int) -> list[Any]:
        floor = await self._floor(conversation_id, log_max)
        lines = [line for line in floor.lines if int(line.get("seq", 0)) > log_max and line.get("message_id")]
        return [max(floor.seq, 0), json.dumps(lines)]

    async def repair(self, conversation_id: str, log_max: int) -> None:
        """Vouch for the log again after Redis lost data: put back archived lines it
        lacks and set the counter above the floor (idempotent; see the module doc)."""
        args = ["", "{}", LOG_TTL_S, *await self._floor_args(conversation_id, log_max)]
        await self._append(keys=self._keys(conversation_id), args=args)

    async def _fill_hole(self, conversation_id: str, hole: int) -> bool:
        """Append lines archived above ``hole`` since the repair that the log lacks;
        True if any were. Appended anew (a new seq, at the end), not at their old seq:
        readers' cursors have moved past the hole by now and would never see them."""
        floor = await self._floor(conversation_id, hole)
        added = False
        for line in floor.lines:
            message_id = str(line.get("message_id") or "")
            if int(line.get("seq", 0)) <= hole or not message_id:
                continue
            entry = {k: v for k, v in line.items() if k not in ("seq", "message_id")}
            added = (await self.append(conversation_id, message_id, entry)).created or added
        return added

    async def after(self, conversation_id: str, after_seq: int, limit: int = 500) -> list[dict[str, Any]]:
        """Entries with seq > after_seq, oldest first, at most ``limit``. With a floor
        source, a log that Redis may have rewound is repaired first."""
        keys = self._keys(conversation_id)
        start, count = max(after_seq, 0), max(limit, 1)
        if not self._checked:
            raw: list[Any] = await self._redis.zrangebyscore(keys[0], f"({start}", "+inf", start=0, num=count)
        else:
            found = await self._read(keys=keys, args=[start, count])
            if int(found[0]) == 0:
                await self.repair(conversation_id, int(found[1]))
                found = await self._read(keys=keys, args=[start, count])
            elif int(found[0]) == 2 and await self._fill_hole(conversation_id, int(found[1])):
                found = await self._read(keys=keys, args=[start, count])
            raw = list(found[2:]) if int(found[0]) in (1, 2) else []
        return [json.loads(item) for item in raw if isinstance(item, str | bytes)]

    async def last_seq(self, conversation_id: str) -> int:
        """The highest seq in the log (0 if none): what a transcript waits for."""
        last = await self._redis.zrange(self._keys(conversation_id)[0], -1, -1, withscores=True)
        return int(last[0][1]) if last else 0

    async def entry_of(self, conversation_id: str, message_id: str) -> tuple[int, dict[str, Any]] | None:
        """The seq and entry of ``message_id``'s line in one round trip, None if the log
        has no such id. An id whose entry the log lacks (Redis lost it) is read the long
        way, through ``after``, which repairs the log first."""
        found = await self._entry(keys=self._keys(conversation_id)[:2], args=[message_id])
        if not found:
            return None
        seq = int(found[0])
        if len(found) > 1 and found[1]:
            return seq, json.loads(found[1])
        entries = await self.after(conversation_id, seq - 1, 1)
        return (seq, entries[0]) if entries and int(entries[0].get("seq", 0)) == seq else None

    async def seq_of(self, conversation_id: str, message_id: str) -> int | None:
        raw = await self._redis.hget(self._keys(conversation_id)[1], message_id)
        return int(raw) if raw is not None else None
