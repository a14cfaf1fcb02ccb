"""Fair shares of the partitions between live gateway processes (a gateway that joins
gets partitions handed over to it; one that stops hands its own over).

Who is alive: every process of the default domain beats once a second into a Redis
sorted set (``<prefix>gw:members``, scored with Redis's own clock so hosts' clocks do
not matter); a member whose beat is older than MEMBER_STALE_MS is gone. Who owns what:
the partitions' leases (their tokens start with the holder's member id, host:pid).

The plan is a pure function of that view (``plan``): with N live members and P
partitions each aims at floor(P/N) or ceil(P/N). A member hands ONE partition over
when it holds more than ceil, or more than floor while another holds less than floor;
the receiver is the member holding fewest. Each move goes from a member holding at
least two more than the receiver, so the sum of squared shares falls with every move:
moves end, and a fair state (everyone within floor..ceil) is never left by a move
(hysteresis: 3/3/2 of 8 stays, whoever holds the 2). On top of that, a member acts only
once the membership has been unchanged for SETTLE_S (a process restarting in a loop
does not drag partitions around), and one move at a time in the whole deployment (the
``gw:rebalance`` lock), each planned on a fresh view.

A move (services.im_gateway.serving.Serving.hand_over): the giver writes a handoff
record naming the receiver (``gw:handoff:<domain>``, HANDOFF_TTL_MS), stops consuming
the partition's queues, lets what it already took finish (written, confirmed by the XEP-0199
ping barrier, acknowledged), closes the component stream and only then releases the
lease. Only the named receiver may claim a released partition while the record lives (it
looks every HANDOFF_POLL_S meanwhile); the XMPP server admits its component connection
only once the giver's stream is gone. Consecutive moves between the same two members are
made together (``batch``). A dead owner's partition is not a move: whoever
looks first claims it (services.im_gateway.lease), and the next plan evens the shares.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.common.lease import Lease
from libs.common.settings import Settings

log = logging.getLogger(__name__)

BEAT_S = 1.0
# Three missed beats: a live process under load is not dropped (and its partitions are
# not planned away) for one slow beat; a dead one's partitions are claimed through their
# leases anyway (2.5 missed renewals), so this only delays evening the shares.
MEMBER_STALE_MS = 3000
# Entries of members gone this long are removed from the set (it stays small).
MEMBER_FORGET_MS = 60_000
# The view (members, owners) must stay unchanged this long before a member acts on it.
SETTLE_S = 2.0
# A handoff record lives this long (written again at the release): if the receiver never
# claims (it died meanwhile), the partition is free for anyone afterwards, about as soon
# as a dead owner's would be (< 5 s).
HANDOFF_TTL_MS = 3000
# How often a named receiver looks at a partition promised to it.
HANDOFF_POLL_S = 0.05
# One move at a time in the deployment; the lock outlives a stuck move (the giver lets
# go within serving.LET_GO_WITHIN_S, the receiver claims within MOVE_WITHIN_S after).
LOCK_TTL_MS = 40_000
# A move is over when the receiver holds the lease, or this long after the giver let go.
MOVE_WITHIN_S = 10.0

_BEAT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[2]))
return ms
"""

_LIVE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], ms - tonumber(ARGV[1]), '+inf')
"""


def member_id() -> str:
    """This process, as its leases' tokens name it (services.im_gateway.lease)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def member_of(token: str | None) -> str | None:
    """The member id in a lease token ``host:pid:random``."""
    if not token:
        return None
    return token.rsplit(":", 1)[0]


@dataclass(frozen=True)
class Move:
    partition: int
    giver: str
    receiver: str


def shares(partitions: int, members: int) -> tuple[int, int]:
    """(floor, ceil) of P/N: every member's fair share lies between them."""
    floor, extra = divmod(partitions, members)
    return floor, floor + (1 if extra else 0)


def plan(members: list[str], owners: dict[int, str | None], pinned: frozenset[str] = frozenset()) -> Move | None:
    """The next move towards fair shares, or None if there is nothing to move.

    ``owners``: partition number -> member id holding its lease (None: free). Nothing is
    planned while a partition is free or held by a member not in ``members`` (a dead
    one): standbys claim those first. ``pinned`` members (started with
    HABLA_GATEWAY_SERVE_PARTITIONS other than all) neither give nor receive; the
    partitions they hold are left out of the shares. Deterministic: the giver is the
    member holding most (ties: lowest id), the receiver the one holding fewest (ties:
    lowest id), the partition the giver's highest-numbered."""
    if any(owner is None or owner not in members for owner in owners.values()):
        return None
    movable = [m for m in members if m not in pinned]
    owned = {n: owner for n, owner in owners.items() if owner not in pinned}
    if not movable or not owned:
        return None
    counts = {member: 0 for member in movable}
    for owner in owned.values():
        if owner is not None:
            counts[owner] += 1
    floor, ceil = shares(len(owned), len(movable))
    giver = min(movable, key=lambda m: (-counts[m], m))
    receiver = min(movable, key=lambda m: (counts[m], m))
    if not (counts[giver] > ceil or (counts[giver] > floor and counts[receiver] < floor)):
        return None
    partition = max(n for n, owner in owned.items() if owner == giver)
    return Move(partition, giver, receiver)


def batch(members: list[str], owners: dict[int, str | None], pinned: frozenset[str] = frozenset()) -> list[Move]:
    """The plan's next moves while they go from the same giver to the same receiver:
    made together (one handover of several partitions), e.g. 8 + 0 -> 4 + 4 at once."""
    owners = dict(owners)
    moves: list[Move] = []
    while (move := plan(members, owners, pinned)) is not None:
        if moves and (move.giver, move.receiver) != (moves[0].giver, moves[0].receiver):
            break
        moves.append(move)
        owners[move.partition] = move.receiver
    return moves


def farewell(
    me: str, members: list[str], owners: dict[int, str | None], pinned: frozenset[str] = frozenset()
) -> dict[int, str]:
    """Where a stopping member's partitions go: each to the other live (not pinned)
    member holding fewest at that point (ties: lowest id), so a graceful stop spreads
    them evenly."""
    others = [m for m in members if m != me and m not in pinned]
    if not others:
        return {}
    counts = {m: sum(1 for owner in owners.values() if owner == m) for m in others}
    handoffs: dict[int, str] = {}
    for n in sorted(n for n, owner in owners.items() if owner == me):
        receiver = min(others, key=lambda m: (counts[m], m))
        counts[receiver] += 1
        handoffs[n] = receiver
    return handoffs


class Members:
    """This process's beat in ``<prefix>gw:members``, and the live members.

    A member that may own only some partitions (HABLA_GATEWAY_SERVE_PARTITIONS) says so
    in ``<prefix>gw:members:pinned``: the plan leaves it and its partitions alone."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, me: str | None = None, pinned: bool = False) -> None:
        self.me = me or member_id()
        self.pinned = pinned
        self._key = settings.redis_key("gw", "members")
        self._pinned_key = settings.redis_key("gw", "members", "pinned")
        self._beat = redis.register_script(_BEAT)
        self._live = redis.register_script(_LIVE)
        self._redis = redis

    async def beat(self) -> None:
        await self._beat(keys=[self._key], args=[self.me, MEMBER_FORGET_MS])
        if self.pinned:
            await self._redis.sadd(self._pinned_key, self.me)
            # Dead pinned members' entries go with the set once no pinned member beats.
            await self._redis.pexpire(self._pinned_key, MEMBER_FORGET_MS)

    async def live(self) -> list[str]:
        found = await self._live(keys=[self._key], args=[MEMBER_STALE_MS])
        return sorted(str(m) for m in found)

    async def pinned_members(self) -> frozenset[str]:
        return frozenset(str(m) for m in await self._redis.smembers(self._pinned_key))

    async def leave(self) -> None:
        await self._redis.zrem(self._key, self.me)
        await self._redis.srem(self._pinned_key, self.me)


class Rebalancer:
    """Beats, and when this member is a plan's giver, makes the move.

    ``hand_over(partitions, receiver)`` hands partitions over (Serving.hand_over);
    ``owners()`` reads the partitions' lease holders."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        owners: Callable[[], Awaitable[dict[int, str | None]]],
        hand_over: Callable[[list[int], str], Awaitable[None]],
        me: str | None = None,
        pinned: bool = False,
    ) -> None:
        self.members = Members(redis, settings, me, pinned)
        self._owners = owners
        self._hand_over = hand_over
        self._lock = Lease(redis, settings.redis_key("gw", "rebalance"), LOCK_TTL_MS)
        self.moves = 0  # partitions handed over by this process's rebalancing
        self.stopped = False  # set by a graceful stop: no more beats or moves

    async def run(self) -> None:
        members_seen: list[str] | None = None
        since = time.monotonic()
        while not self.stopped:
            try:
                await self.members.beat()
                members = await self.members.live()
                if members != members_seen:
                    # A member came or went: act only once the membership has settled.
                    members_seen, since = members, time.monotonic()
                elif time.monotonic() - since >= SETTLE_S:
                    moves = batch(members, await self._owners(), await self.members.pinned_members())
                    if moves and moves[0].giver == self.members.me and not self.stopped:
                        await self._move(moves)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("rebalance: Redis unreachable; trying again: %s", exc)
            except Exception:
                log.exception("rebalance step failed")
            await asyncio.sleep(BEAT_S)

    async def _move(self, moves: list[Move]) -> None:
        if not await self._lock.acquire():
            return  # another member is moving: plan again on the next view
        try:
            receiver = moves[0].receiver
            numbers = [move.partition for move in moves]
            log.info("rebalance: handing partitions over", extra={"partitions": numbers, "to": receiver})
            started = time.monotonic()
            await self._hand_over(numbers, receiver)
            let_go = time.monotonic()
            while time.monotonic() - let_go < MOVE_WITHIN_S:
                owners = await self._owners()
                if all(owners.get(n) not in (None, self.members.me) for n in numbers):
                    break
                await asyncio.sleep(HANDOFF_POLL_S)
            self.moves += len(numbers)
            log.info(
                "rebalance: partitions handed over",
                extra={"partitions": numbers, "to": receiver, "s": round(time.monotonic() - started, 2)},
            )
        finally:
            await self._lock.release()
