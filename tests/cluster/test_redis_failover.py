"""Redis master + replica + 3 Sentinels: failovers under a steady stream of chat lines lose
no acknowledged line, and a conversation's numbers never go backwards.

Writers append lines to their conversations through ``ConversationLog`` (as the frontend
and the gateway do) with HABLA_REDIS_WAIT_MS on, retrying a failed append with the same
message id as a widget resends. First a planned ``SENTINEL FAILOVER`` (the old master is
demoted and answers READONLY), then the new master is SIGKILLed and restarted empty (as a
restart policy would; Sentinel makes it a replica). Afterwards every
acknowledged line must be in its log with the seq it was acknowledged with, and the
acknowledged seqs of a conversation must rise in the order they were acknowledged.

The floor source is "trust the log" (no MySQL here): numbering after a failover comes only
from what the promoted replica holds, so a lost acknowledged tail would show up as a
repeated seq or a missing line, not be papered over by MySQL's floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.common import sitedir, state
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog, Floor, chat_line
from tools.sentinel import SentinelSet

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    # redis-py drops a connection to a killed server without closing its StreamWriter;
    # collected here (below) rather than warned about in whichever test runs next.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


def _collect_dropped_connections() -> None:
    gc.collect()


CONVERSATIONS = 6


class Writers:
    def __init__(self, log: ConversationLog) -> None:
        self.log = log
        self.acked: dict[str, list[tuple[str, int]]] = {}  # conversation -> [(message id, seq)]
        self.failed_attempts = 0
        self.floor_calls = 0
        self.running = True

    async def write(self, conversation_id: str) -> None:
        acked = self.acked.setdefault(conversation_id, [])
        n = 0
        while self.running:
            n += 1
            message_id = f"{conversation_id}-{n}"
            entry = chat_line("visitor", f"line {n}", int(time.time() * 1000))
            while True:  # the widget's resend: same id until acknowledged
                try:
                    appended = await self.log.append(conversation_id, message_id, entry, new_conversation=n == 1)
                    break
                except (RedisError, ConnectionError, OSError):
                    self.failed_attempts += 1
                    await asyncio.sleep(0.1)
            acked.append((message_id, appended.seq))
            await asyncio.sleep(0.01)


async def _count_grows(writers: Writers, by: int, timeout_s: float) -> None:
    start = sum(len(v) for v in writers.acked.values())
    deadline = time.monotonic() + timeout_s
    while sum(len(v) for v in writers.acked.values()) < start + by:
        assert time.monotonic() < deadline, "appends did not resume after the failover"
        await asyncio.sleep(0.1)


async def test_failovers_lose_no_acknowledged_line(sentinels: SentinelSet) -> None:
    settings = Settings.from_env(
        {},
        redis_sentinels=sentinels.addresses,
        redis_master_name=sentinels.master_name,
        redis_wait_ms=1000,
        redis_prefix=f"habla-failover-{uuid.uuid4().hex[:6]}:",
    )
    redis = state.connect(settings)

    writers: Writers

    async def trust_the_log(conversation_id: str, log_max: int) -> Floor:
        writers.floor_calls += 1
        return Floor(0, [])

    writers = Writers(ConversationLog(redis, settings, floor=trust_the_log))
    tasks = [asyncio.create_task(writers.write(f"conv{i}")) for i in range(CONVERSATIONS)]
    try:
        await asyncio.sleep(2)
        first = sentinels.master_port()
        await asyncio.to_thread(sentinels.failover)  # planned: old master demoted
        second = await asyncio.to_thread(sentinels.wait_for_new_master, first)
        await _count_grows(writers, 200, 60)
        # The demoted master must be a caught-up replica before the next failover can
        # promote it; then the current master dies without a word.
        await asyncio.to_thread(sentinels.wait_replica_in_sync, first)
        await asyncio.sleep(1)
        victim = sentinels.master()
        await asyncio.to_thread(victim.kill)
        third = await asyncio.to_thread(sentinels.wait_for_new_master, second)
        # Lines are refused while the new master has no replica; its restart policy
        # brings the dead server back (empty), and Sentinel makes it the new replica.
        await asyncio.to_thread(victim.start)
        await _count_grows(writers, 200, 90)
    finally:
        writers.running = False
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)

    reader = ConversationLog(redis, dataclasses.replace(settings, redis_wait_ms=0))
    lost, moved, backwards, acked_total = 0, 0, 0, 0
    for conversation_id, acked in writers.acked.items():
        in_log = {e["message_id"]: e["seq"] for e in await reader.after(conversation_id, 0, limit=100_000)}
        seqs = [seq for _, seq in acked]
        backwards += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        for message_id, seq in acked:
            acked_total += 1
            if message_id not in in_log:
                lost += 1
            elif in_log[message_id] != seq:
                moved += 1
    print(
        f"\nmasters {first} -> {second} (SENTINEL FAILOVER) -> {third} (SIGKILL); acknowledged {acked_total} lines "
        f"in {CONVERSATIONS} conversations; lost {lost}, seq changed {moved}, seq backwards {backwards}; "
        f"failed attempts retried {writers.failed_attempts}; floor asked {writers.floor_calls} times"
    )
    await redis.aclose()
    _collect_dropped_connections()
    assert acked_total > 400
    assert (lost, moved, backwards) == (0, 0, 0)


async def test_raw_connections_and_the_cli_find_the_master(sentinels: SentinelSet) -> None:
    """The gateway's marking connection (state.master_address) and `habla`'s synchronous
    client (sitedir.invalidate_sync) reach the master the Sentinels name."""
    settings = Settings.from_env(
        {}, redis_sentinels=sentinels.addresses, redis_prefix=f"habla-cli-{uuid.uuid4().hex[:6]}:"
    )
    host, port = await state.master_address(settings)
    assert (host, port) == ("127.0.0.1", sentinels.master_port())
    redis = state.connect(settings)
    key = settings.redis_key("site", "4324-24618-10-8812", "config")
    await redis.set(key, "cached")
    await asyncio.to_thread(sitedir.invalidate_sync, settings, "4324-24618-10-8812")
    assert await redis.exists(key) == 0
    await redis.aclose()


async def test_shared_connection_on_a_demoted_master_moves_to_the_new_one(sentinels: SentinelSet) -> None:
    """state.connect's shared connection (state.shared) opened on a server that is a
    replica by the time it writes, as happens when the Sentinels still named the old
    master: the READONLY answer drops it (redis-py's SentinelManagedConnection raises
    ConnectionError from the read) and the write is sent once more on a fresh connection,
    which asks the Sentinels again and reaches the master. The caller sees no error."""
    settings = Settings.from_env(
        {},
        redis_sentinels=sentinels.addresses,
        redis_master_name=sentinels.master_name,
        redis_prefix=f"habla-readonly-{uuid.uuid4().hex[:6]}:",
    )
    master = sentinels.master_port()
    replica = next(server.port for server in sentinels.data if server.port != master)
    redis = state.connect(settings)
    pool: Any = redis.connection_pool
    asked: list[tuple[str, int]] = []
    sentinels_answer = pool.get_master_address

    async def stale_then_true() -> tuple[str, int]:
        # The first connection goes where a stale answer would send it: the replica.
        address = ("127.0.0.1", replica) if not asked else await sentinels_answer()
        asked.append(address)
        return address

    pool.get_master_address = stale_then_true
    key = settings.redis_key("readonly-check")
    try:
        assert await redis.set(key, "written", ex=60) is True
        assert asked == [("127.0.0.1", replica), ("127.0.0.1", master)]
        assert await redis.get(key) == "written"
        raw = aioredis.Redis(port=master, decode_responses=True)
        assert await raw.get(key) == "written"  # on the master itself
        await raw.aclose()
    finally:
        await redis.aclose()
