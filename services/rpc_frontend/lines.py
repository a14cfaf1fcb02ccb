"""A visitor's line into Redis in one round trip: the per-visitor limit, the
conversation's ensure (and the visitor's claim on it), the log append, and the
"unconfirmed" mark that lets the sweep publish it again if no confirm ever comes.

These were four round trips awaited one after another (limit, ensure, append, mark),
plus a fifth for the claim on a conversation's first line. One Lua script does the
same steps in the same order, atomically. The append is the conversation log's own
script (``conversations.APPEND_SCRIPT``, run as a Lua function whose KEYS and ARGV
are the conversation's), so the numbering and its floor after a Redis restart are
exactly the log's. The conversation's keys are known only once the script has
ensured the conversation: Redis without Cluster (Habla runs a single master, with
Sentinel) lets a script name them itself.

The rare cases go back to the separate steps: a log whose counter no running Redis
vouches for needs a floor from MySQL (``ConversationLog.append`` asks for it), and a
conversation id the script cannot splice into the mark's JSON is marked from Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from libs.common.ratelimit import HIT_FUNCTION, RateLimited
from libs.common.settings import Settings
from libs.common.state.conversations import APPEND_SCRIPT, LOG_TTL_S
from libs.common.state.replicas import ReplicaWait

# KEYS[1] = the visitor's line counter (RateLimiter "msg"), KEYS[2] = session hash,
# KEYS[3] = the unconfirmed set; ARGV[1] = limit per minute (-1: not counted),
# ARGV[2] = a new conversation id, ARGV[3] = "<prefix>conv:", ARGV[4] = message id,
# ARGV[5] = entry JSON, ARGV[6] = log TTL, ARGV[7] = visitor id, ARGV[8] = the
# conversation the caller last knew, ARGV[9] = now (the mark's score), ARGV[10] =
# the mark's JSON after its conversation id.
# Returns {1, seconds}: over the limit; {2}: the session is gone; {3, conversation,
# created}: the log needs a floor (not appended, not marked); else {0, conversation,
# created, seq, appended (0: a retry of a line already there), marked, watched (1: the
# log was repaired a moment ago and readers still look for lines archived late)}.
_SEND = (
    HIT_FUNCTION
    + """
local function append_line(KEYS, ARGV)
"""
    + APPEND_SCRIPT
    + """
end
if tonumber(ARGV[1]) >= 0 then
  local ttl = limit_hit(KEYS[1], 60, tonumber(ARGV[1]))
  if ttl > 0 then return {1, ttl} end
end
if redis.call('EXISTS', KEYS[2]) == 0 then return {2} end
local conversation = redis.call('HGET', KEYS[2], 'conversation_id')
local created = 0
if not conversation or conversation == '' then
  conversation = ARGV[2]
  created = 1
  redis.call('HSET', KEYS[2], 'conversation_id', conversation)
end
local base = ARGV[3] .. conversation
if created == 1 or conversation ~= ARGV[8] then
  -- the visitor may read this conversation for the log's lifetime
  redis.call('SET', base .. ':visitor', ARGV[7], 'EX', ARGV[6], 'NX')
end
local floor = -1
if created == 1 then floor = 0 end
local appended = append_line(
  {base .. ':lines', base .. ':ids', base .. ':meta'}, {ARGV[4], ARGV[5], ARGV[6], floor, '[]'})
if appended[1] < 0 then return {3, conversation, created} end
local marked = 0
if string.match(conversation, '^[%w_-]+$') then
  redis.call('ZADD', KEYS[3], ARGV[9], '{"conversation_id": "' .. conversation .. '"' .. ARGV[10])
  marked = 1
end
-- Readers look for lines archived late for a while after a repair (ConversationLog.after):
-- the sender's echo must then be read too, not answered from the line itself.
local watched = 0
if tonumber(redis.call('HGET', base .. ':meta', 'hole_until') or '0') > tonumber(redis.call('TIME')[1]) then
  watched = 1
end
return {0, conversation, created, appended[1], appended[2], marked, watched}
"""
)


@dataclass(frozen=True)
class Written:
    conversation_id: str
    created: bool  # the conversation was opened by this line
    seq: int  # 0 when the log needs a floor (nothing appended: see LineWriter.write)
    appended: bool  # False: the message id was in the log already (a retry)
    marked: bool  # the unconfirmed mark is in Redis
    watched: bool = False  # readers of this log still look for lines archived late (a repair)


class LineWriter:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._settings = settings
        self._send = redis.register_script(_SEND)
        # HABLA_REDIS_WAIT_MS, as ConversationLog.append: acknowledged once a replica has it.
        self._replicas = ReplicaWait(redis, settings.redis_wait_ms)

    async def write(
        self,
        *,
        visitor_id: str,
        known_conversation: str,
        new_conversation: str,
        message_id: str,
        entry_json: str,
        mark_tail: str,
        now: float,
        limit: int | None,
    ) -> Written | None:
        """Run the steps; None if the session is gone; RateLimited over ``limit``.

        ``entry_json`` is the log entry with its message id (as ConversationLog.append
        builds it); ``mark_tail`` the unconfirmed mark's JSON after the conversation id."""
        key = self._settings.redis_key
        keys = [key("rl", "msg", visitor_id), key("visitor", visitor_id), key("frontend", "unconfirmed")]
        args: list[Any] = [
            -1 if limit is None else limit,
            new_conversation,
            key("conv", ""),
            message_id,
            entry_json,
            LOG_TTL_S,
            visitor_id,
            known_conversation,
            repr(now),
            mark_tail,
        ]
        async with self._replicas.connection() as client:
            answer = await self._send(keys=keys, args=args, client=client)
            if int(answer[0]) == 0:
                # Also for a retry: the first attempt may not have reached a replica.
                await self._replicas.confirm(client)
        status = int(answer[0])
        if status == 1:
            raise RateLimited("messages", int(answer[1]))
        if status == 2:
            return None
        if status == 3:
            return Written(str(answer[1]), bool(int(answer[2])), 0, False, False)
        return Written(
            str(answer[1]),
            bool(int(answer[2])),
            int(answer[3]),
            bool(int(answer[4])),
            bool(int(answer[5])),
            bool(int(answer[6])),
        )
