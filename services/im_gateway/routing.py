"""Which operator a conversation goes to: least busy first, sticky, force-away.

State lives in Redis (so a restarted or standby gateway routes the same way):
* ``gw:conv:<id>`` hash: site, visitor, operator ("" while offered), offered (comma
  list), answered (0/1), deadline_ms (answer-by time while unanswered);
* ``gw:opconv:<operator>`` set of the operator's open conversations (their load);
* ``gw:siteconv:<site>`` set of the site's open conversations ("1 chatting");
* ``gw:deadlines`` sorted set of unanswered conversations by answer-by time;
* ``gw:away`` hash of operators forced away for routing (until they write or
  change their status).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from libs.common.settings import Settings
from libs.common.state.conversations import APPEND_SCRIPT, LOG_TTL_S
from libs.common.state.replicas import ReplicaWait


def _now_ms() -> int:
    return int(time.time() * 1000)


# An operator's line needs the visitor's session (which names the conversation),
# then the conversation, then the log append: one round trip instead of three. The
# conversation, blocked and log keys follow from the session, so they are built here
# from the prefixes in ARGV (fine on one Redis or a Sentinel-watched master; a Redis
# Cluster would need them declared). KEYS[1] the session, KEYS[2] the force-away hash.
# ARGV[1] conversation key prefix, ARGV[2] its TTL, ARGV[3] blocked key prefix,
# ARGV[4] visitor id, ARGV[5] the operator writing a line ("" for none: a command, a
# receipt, a chat state), ARGV[6] the conversation log's key prefix, ARGV[7] the line's
# message id ("" = append nothing), ARGV[8] its log entry (JSON, without the operator's
# name), ARGV[9] the log's TTL, then pairs of the writer's sites and their name there.
# A line lifts the writer's force-away if the visitor is on one of those sites (a
# stranger's line changes nothing), and is appended only where relay.operator_line
# would append it without asking anything first: the visitor not blocked, the
# conversation the writer's and already answered, the visitor on one of the writer's
# sites. The append is the log's own script (conversations.APPEND_SCRIPT, as a Lua
# function with the log's KEYS and ARGV): same numbering, same dedupe by message id,
# and a log no running Redis vouches for appends nothing (it needs a floor from MySQL:
# the caller appends the long way). Returns {session, conversation, blocked, seq,
# appended}: seq 0 if nothing was tried, -1 if the log needs a floor; appended 0 for
# a message id already in the log.
_LINE_CONTEXT = (
    """
local function append_line(KEYS, ARGV)
"""
    + APPEND_SCRIPT
    + """
end
local session = redis.call('HGETALL', KEYS[1])
local site, conv = '', ''
for i = 1, #session, 2 do
  if session[i] == 'site_id' then site = session[i + 1]
  elseif session[i] == 'conversation_id' then conv = session[i + 1] end
end
local data, blocked = {}, 0
if conv ~= '' then
  data = redis.call('HGETALL', ARGV[1] .. conv)
  redis.call('EXPIRE', ARGV[1] .. conv, ARGV[2])
end
if site ~= '' then blocked = redis.call('SISMEMBER', ARGV[3] .. site, ARGV[4]) end
local name = nil
if ARGV[5] ~= '' and site ~= '' then
  for i = 10, #ARGV, 2 do
    if ARGV[i] == site then
      redis.call('HDEL', KEYS[2], ARGV[5])
      name = ARGV[i + 1]
      break
    end
  end
end
local appended = {0, 0}
if name and ARGV[7] ~= '' and blocked == 0 and #data > 0 then
  local operator, answered = '', ''
  for i = 1, #data, 2 do
    if data[i] == 'operator' then operator = data[i + 1]
    elseif data[i] == 'answered' then answered = data[i + 1] end
  end
  if operator == ARGV[5] and answered == '1' then
    local entry = cjson.decode(ARGV[8])
    entry['operator_name'] = name
    entry['message_id'] = ARGV[7]
    local base = ARGV[6] .. conv
    appended = append_line(
      {base .. ':lines', base .. ':ids', base .. ':meta'}, {ARGV[7], cjson.encode(entry), ARGV[9], -1, '[]'})
  end
end
return {session, data, blocked, appended[1], appended[2]}
"""
)


@dataclass(frozen=True)
class OperatorLine:
    """An operator's line for ``Routing.line_context`` to append in its round trip."""

    message_id: str
    entry: dict[str, Any]  # conversations.chat_line(...), its operator_name set per site
    names: Mapping[str, str]  # the writer's sites -> their display name there


@dataclass(frozen=True)
class Logged:
    """What ``line_context`` did with an OperatorLine."""

    message_id: str
    sent_at_ms: int
    operator_name: str
    seq: int  # its number in the log
    created: bool  # False: the message id was in the log already (a resend)


def _pairs(flat: list[Any]) -> dict[str, str]:
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    return dict(zip(text[::2], text[1::2], strict=True))


@dataclass(frozen=True)
class LineContext:
    """What an operator's message to a visitor needs, read in one round trip."""

    session: dict[str, str] | None
    conversation: Conversation | None  # the session's conversation, if open
    blocked: bool
    logged: Logged | None = None  # the line, if appended with the context (see _LINE_CONTEXT)


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    site_id: str
    visitor_id: str
    operator: str  # "" while offered to several
    offered: tuple[str, ...]
    answered: bool

    @property
    def recipients(self) -> tuple[str, ...]:
        return (self.operator,) if self.operator else self.offered


class Routing:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        # Gateway state of a conversation outlives its idle timeout a little, so the
        # closer (transcript worker) always finds it to free the operator's slot.
        self._ttl_s = settings.conversation_idle_s * 2
        self._line_context = redis.register_script(_LINE_CONTEXT)
        # HABLA_REDIS_WAIT_MS, as ConversationLog.append: a line appended with the
        # context is acknowledged once a replica has it.
        self._replicas = ReplicaWait(redis, settings.redis_wait_ms)

    def _key(self, *parts: str) -> str:
        return self._settings.redis_key("gw", *parts)

    async def get(self, conversation_id: str) -> Conversation | None:
        if not conversation_id:
            return None
        data = cast(dict[str, str], await self._redis.hgetall(self._key("conv", conversation_id)))
        return self._conversation(conversation_id, data)

    def conversation_key(self, conversation_id: str) -> str:
        """The conversation's hash (for a script that reads it with other keys)."""
        return self._key("conv", conversation_id)

    def queue_get(self, pipe: Any, conversation_id: str) -> None:
        """``get`` as a command on ``pipe``; ``from_get`` reads its answer."""
        pipe.hgetall(self._key("conv", conversation_id))

    def from_get(self, conversation_id: str, answer: Any) -> Conversation | None:
        """A conversation from its HGETALL: a dict, or a script's flat list of pairs."""
        if isinstance(answer, list):
            answer = _pairs(answer)
        return self._conversation(conversation_id, cast(dict[str, str], answer))

    @staticmethod
    def _conversation(conversation_id: str, data: dict[str, str]) -> Conversation | None:
        if not data:
            return None
        return Conversation(
            conversation_id,
            data["site"],
            data["visitor"],
            data.get("operator", ""),
            tuple(op for op in data.get("offered", "").split(",") if op),
            data.get("answered") == "1",
        )

    async def for_line(self, conversation_id: str, site_id: str, visitor_id: str) -> tuple[Conversation | None, bool]:
        """(conversation, visitor blocked) in one round trip, refreshing the conversation's TTL."""
        async with self._redis.pipeline(transaction=False) as pipe:
            self.queue_for_line(pipe, conversation_id, site_id, visitor_id)
            return self.from_for_line(conversation_id, await pipe.execute())

    def pipeline(self) -> Any:
        """A pipeline (no transaction) on the gateway's Redis: lookups of several parts
        read in one round trip (queue_for_line, Delivered.queue_seen)."""
        return self._redis.pipeline(transaction=False)

    def queue_for_line(self, pipe: Any, conversation_id: str, site_id: str, visitor_id: str) -> None:
        """``for_line``'s three commands, queued on ``pipe``; ``from_for_line`` reads their answers."""
        pipe.hgetall(self._key("conv", conversation_id))
        pipe.sismember(self._key("blocked", site_id), visitor_id)
        pipe.expire(self._key("conv", conversation_id), self._ttl_s)

    def from_for_line(self, conversation_id: str, answers: list[Any]) -> tuple[Conversation | None, bool]:
        data, blocked = answers[0], answers[1]
        return self._conversation(conversation_id, data), bool(blocked)

    async def line_context(
        self,
        session_key: str,
        visitor_id: str,
        writer: str | None = None,
        writer_sites: Iterable[str] = (),
        line: OperatorLine | None = None,
    ) -> LineContext:
        """The visitor's session (at ``session_key``), its conversation and whether the
        visitor is blocked, in one round trip, refreshing the conversation's TTL as
        ``for_line`` does. ``writer``: an operator writing a line, whose force-away
        that lifts (``clear_away``) if the visitor is on one of ``writer_sites``.
        ``line`` (the writer's, with a name for each of ``writer_sites``): appended to
        the conversation log in the same round trip when nothing needs deciding first
        (the conversation is the writer's and answered, the visitor not blocked); the
        answer's ``logged`` says so, else the caller appends it the usual way."""
        sites = list(writer_sites) if writer else []
        names = line.names if line is not None else {}
        pairs = [item for site in sites for item in (site, names.get(site, ""))]
        args: list[Any] = [
            self._key("conv", ""),
            self._ttl_s,
            self._key("blocked", ""),
            visitor_id,
            writer or "",
            self._settings.redis_key("conv", ""),  # ConversationLog's keys
            line.message_id if line is not None and writer else "",
            json.dumps(line.entry) if line is not None and writer else "{}",
            LOG_TTL_S,
            *pairs,
        ]
        async with self._replicas.connection() as client:
            session, data, blocked, seq, created = await self._line_context(
                keys=[session_key, self._key("away")], args=args, client=client
            )
            if int(seq) > 0:
                # Also for a resend (created 0): the first attempt may not have reached a replica.
                await self._replicas.confirm(client)
        fields = _pairs(session)
        conversation_id = fields.get("conversation_id", "")
        conversation = self._conversation(conversation_id, _pairs(data)) if conversation_id else None
        logged = None
        if line is not None and int(seq) > 0:
            site = fields.get("site_id", "")
            logged = Logged(
                line.message_id, int(line.entry["sent_at_ms"]), names.get(site, ""), int(seq), bool(int(created))
            )
        return LineContext(fields or None, conversation, bool(blocked), logged)

    async def load(self, operator: str) -> int:
        """Open conversations of an operator (stale members are dropped)."""
        key = self._key("opconv", operator)
        return await self._count_open(key)

    async def _count_open(self, key: str) -> int:
        """How many conversations of the set ``key`` are still open; the others (expired
        without a close) are dropped from it. One round trip for the EXISTS checks,
        whatever their number: the site bot asks this of every dirty site each interval."""
        members = [str(m) for m in await self._redis.smembers(key)]
        if not members:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for cid in members:
                pipe.exists(self._key("conv", cid))
            alive = [bool(n) for n in await pipe.execute()]
        stale = [cid for cid, ok in zip(members, alive, strict=True) if not ok]
        if stale:
            await self._redis.srem(key, *stale)
        return sum(alive)

    async def choose(self, candidates: Iterable[str]) -> str | None:
        """The least busy candidate; ties go to whoever was assigned longest ago."""
        best: tuple[int, int, str] | None = None
        for operator in sorted(set(candidates)):
            last = await self._redis.hget(self._key("lastassigned"), operator)
            rank = (await self.load(operator), int(last or 0), operator)
            if best is None or rank < best:
                best = rank
        return best[2] if best else None

    async def assign(
        self, conversation_id: str, site_id: str, visitor_id: str, operator: str, *, answered: bool = False
    ) -> Conversation:
        previous = await self.get(conversation_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            if previous and previous.operator and previous.operator != operator:
                pipe.srem(self._key("opconv", previous.operator), conversation_id)
            pipe.hset(
                self._key("conv", conversation_id),
                mapping={
                    "site": site_id,
                    "visitor": visitor_id,
                    "operator": operator,
                    "offered": "",
                    "answered": "1" if answered else "0",
                },
            )
            pipe.expire(self._key("conv", conversation_id), self._ttl_s)
            pipe.sadd(self._key("opconv", operator), conversation_id)
            pipe.expire(self._key("opconv", operator), self._ttl_s)
            pipe.sadd(self._key("siteconv", site_id), conversation_id)
            pipe.expire(self._key("siteconv", site_id), self._ttl_s)
            pipe.hset(self._key("lastassigned"), operator, _now_ms())
            if answered:
                pipe.zrem(self._key("deadlines"), conversation_id)
            else:
                deadline = _now_ms() + self._settings.gateway_answer_timeout_s * 1000
                pipe.zadd(self._key("deadlines"), {conversation_id: deadline})
            await pipe.execute()
        return Conversation(conversation_id, site_id, visitor_id, operator, (), answered)

    async def offer(
        self, conversation_id: str, site_id: str, visitor_id: str, operators: Iterable[str]
    ) -> Conversation:
        """Offer to several operators: the first to answer takes it."""
        offered = tuple(sorted(set(operators)))
        previous = await self.get(conversation_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            if previous and previous.operator:
                pipe.srem(self._key("opconv", previous.operator), conversation_id)
            pipe.hset(
                self._key("conv", conversation_id),
                mapping={
                    "site": site_id,
                    "visitor": visitor_id,
                    "operator": "",
                    "offered": ",".join(offered),
                    "answered": "0",
                },
            )
            pipe.expire(self._key("conv", conversation_id), self._ttl_s)
            pipe.sadd(self._key("siteconv", site_id), conversation_id)
            pipe.expire(self._key("siteconv", site_id), self._ttl_s)
            pipe.zrem(self._key("deadlines"), conversation_id)
            await pipe.execute()
        return Conversation(conversation_id, site_id, visitor_id, "", offered, False)

    async def answered(self, conversation: Conversation, operator: str) -> bool:
        """Record that ``operator`` wrote in the conversation; True the first time."""
        if conversation.operator != operator:
            await self.assign(
                conversation.conversation_id, conversation.site_id, conversation.visitor_id, operator, answered=True
            )
            return True
        first = not conversation.answered
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key("conv", conversation.conversation_id), "answered", "1")
            pipe.expire(self._key("conv", conversation.conversation_id), self._ttl_s)
            pipe.zrem(self._key("deadlines"), conversation.conversation_id)
            await pipe.execute()
        return first

    async def touch(self, conversation_id: str) -> None:
        await self._redis.expire(self._key("conv", conversation_id), self._ttl_s)

    async def close(self, conversation_id: str) -> Conversation | None:
        conversation = await self.get(conversation_id)
        if conversation is None:
            return None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key("conv", conversation_id))
            if conversation.operator:
                pipe.srem(self._key("opconv", conversation.operator), conversation_id)
            pipe.srem(self._key("siteconv", conversation.site_id), conversation_id)
            pipe.zrem(self._key("deadlines"), conversation_id)
            await pipe.execute()
        return conversation

    async def chatting(self, site_id: str) -> int:
        return await self._count_open(self._key("siteconv", site_id))

    async def open_conversations(self, site_id: str) -> list[Conversation]:
        """The site's open conversations (chatting or offered)."""
        return await self.open_conversations_of([site_id])

    async def open_conversations_of(self, sites: Iterable[str]) -> list[Conversation]:
        """Every open conversation of these sites, in two round trips whatever their number."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for site_id in sorted(sites):
                pipe.smembers(self._key("siteconv", site_id))
            members = sorted({str(cid) for found in await pipe.execute() for cid in found})
        if not members:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for cid in members:
                pipe.hgetall(self._key("conv", cid))
            found = [self._conversation(cid, data) for cid, data in zip(members, await pipe.execute(), strict=True)]
        return [c for c in found if c is not None]

    async def overdue(self) -> list[str]:
        """Unanswered conversations past their answer-by time."""
        return [str(c) for c in await self._redis.zrangebyscore(self._key("deadlines"), "-inf", _now_ms())]

    async def drop_deadline(self, conversation_id: str) -> None:
        await self._redis.zrem(self._key("deadlines"), conversation_id)

    # --- force-away ---------------------------------------------------------------------
    async def force_away(self, operator: str) -> None:
        await self._redis.hset(self._key("away"), operator, _now_ms())

    async def clear_away(self, operator: str) -> bool:
        return bool(await self._redis.hdel(self._key("away"), operator))

    async def forced_away(self) -> set[str]:
        return {str(op) for op in await self._redis.hkeys(self._key("away"))}

    # --- blocked visitors ---------------------------------------------------------------
    async def block(self, site_id: str, visitor_id: str) -> None:
        await self._redis.sadd(self._key("blocked", site_id), visitor_id)

    async def is_blocked(self, site_id: str, visitor_id: str) -> bool:
        return bool(await self._redis.sismember(self._key("blocked", site_id), visitor_id))
