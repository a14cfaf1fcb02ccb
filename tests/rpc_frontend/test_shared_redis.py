"""The frontend's shared Redis connection (services/rpc_frontend/shared_redis.py)
against a redis-server of the test's own: the same answers as the pooled client, each
caller its own answer, error answers that leave the connection usable, and outages
(a killed or stopped server) that fail as the pool's did, then recover."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.common import state
from libs.common.settings import Settings
from services.rpc_frontend import shared_redis
from services.rpc_frontend.shared_redis import SharedConnection
from tools import sentinel


@pytest.fixture
def server(tmp_path: Path) -> Iterator[sentinel.Server]:
    port = sentinel.free_port()
    own = sentinel.Server("shared-redis-test", port, tmp_path, sentinel._data_args(port, None))
    own.start()
    try:
        yield own
    finally:
        if own.process is not None and own.process.poll() is None:
            own.process.send_signal(signal.SIGCONT)  # a test that stopped it
        own.stop()


Clients = tuple[aioredis.Redis, SharedConnection]


@pytest.fixture
async def clients(settings: Settings, server: sentinel.Server) -> AsyncIterator[Clients]:
    pooled = state.connect(dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{server.port}/0"))
    shared = SharedConnection(connection_pool=pooled.connection_pool)
    try:
        yield pooled, shared
    finally:
        await shared.aclose()
        await pooled.aclose()


async def test_same_answers_as_the_pool(clients: Clients) -> None:
    pooled, shared = clients
    await pooled.hset("h", mapping={"a": "1", "b": "é"})
    await pooled.set("s", "x", ex=100)
    assert await shared.hgetall("h") == await pooled.hgetall("h") == {"a": "1", "b": "é"}
    assert await shared.get("missing") is None
    assert await shared.set("t", "y", nx=True) is True  # a response callback (OK -> True)
    assert await shared.set("t", "z", nx=True) is None
    assert 0 < await shared.ttl("s") <= 100
    assert await shared.exists("h", "s", "missing") == 2
    script = shared.register_script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
    assert await script(keys=["n"], args=["é"]) == ["n", "é", 1]
    await pooled.script_flush()  # NOSCRIPT: loaded again, as redis-py's scripts do
    assert await script(keys=["n"], args=["a"]) == ["n", "a", 2]


async def test_each_caller_gets_its_own_answer(clients: Clients) -> None:
    pooled, shared = clients
    await pooled.mset({f"k{i}": str(i) for i in range(300)})

    async def one(i: int) -> tuple[Any, int]:
        return await shared.get(f"k{i}"), await shared.incr(f"n{i % 7}")

    answers = await asyncio.gather(*(one(i) for i in range(300)))
    assert [value for value, _ in answers] == [str(i) for i in range(300)]
    for counter in range(7):  # each counter's increments answered 1, 2, … once each
        counts = sorted(n for i, (_, n) in enumerate(answers) if i % 7 == counter)
        assert counts == list(range(1, len(counts) + 1))
    # All on one connection: the server saw one client besides the pool's.
    clients_seen = await pooled.client_list()
    assert len(clients_seen) == 2


async def test_error_answer_leaves_the_connection_usable(clients: Clients) -> None:
    _, shared = clients
    await shared.set("str", "x")
    results = await asyncio.gather(
        shared.get("str"), shared.hset("str", "f", "v"), shared.get("str"), return_exceptions=True
    )
    assert results[0] == "x" and results[2] == "x"
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])
    assert await shared.get("str") == "x"


async def test_cancelled_caller_does_not_shift_answers(clients: Clients) -> None:
    _, shared = clients
    await shared.set("a", "1")
    await shared.set("b", "2")
    first: asyncio.Future[Any] = asyncio.ensure_future(shared.get("a"))
    second: asyncio.Future[Any] = asyncio.ensure_future(shared.get("b"))
    await asyncio.sleep(0)  # both queued
    first.cancel()
    assert await second == "2"
    assert await shared.get("a") == "1"


async def test_blocking_commands_use_the_pool(clients: Clients) -> None:
    _, shared = clients
    await shared.set("plain", "v")
    waiting: asyncio.Future[Any] = asyncio.ensure_future(shared.blpop(["empty-list"], timeout=5))
    await asyncio.sleep(0.1)
    # Answered while BLPOP still waits: it is not on the shared connection.
    assert await shared.get("plain") == "v"
    assert not waiting.done()
    await shared.rpush("empty-list", "item")
    assert tuple(await waiting) == ("empty-list", "item")


async def test_server_restart(clients: Clients, server: sentinel.Server) -> None:
    _, shared = clients
    await shared.set("k", "1")
    server.kill()
    with pytest.raises(RedisConnectionError):
        await shared.get("k")
    server.start()
    # The first command after the restart goes through (a fresh connection).
    assert await shared.get("k") is None  # --save "": the restarted server is empty
    assert await shared.set("k", "2") is True
    assert await shared.get("k") == "2"


async def test_commands_in_flight_when_the_connection_dies(clients: Clients, server: sentinel.Server) -> None:
    """Killed from the server's side (CLIENT KILL): the commands waiting fail with
    ConnectionError and are sent once more on a fresh connection: all answered."""
    pooled, shared = clients
    await shared.set("k", "v")
    shared_id = next(c["id"] for c in await pooled.client_list() if c["cmd"] != "client|list")
    slow = pooled.register_script(
        "local t = redis.call('TIME') while true do local n = redis.call('TIME') "
        "if (n[1] - t[1]) * 1000000 + n[2] - t[2] > 200000 then return 1 end end"
    )
    # A script holds the server 0.2 s; the shared connection's GETs queue behind it and
    # the kill lands before their answers.
    blocker = asyncio.create_task(slow())
    await asyncio.sleep(0.05)
    gets: list[asyncio.Future[Any]] = [asyncio.ensure_future(shared.get("k")) for _ in range(5)]
    kill = pooled.execute_command("CLIENT", "KILL", "ID", shared_id)  # type: ignore[no-untyped-call]
    killer: asyncio.Future[Any] = asyncio.ensure_future(kill)
    await blocker
    assert await killer == 1
    assert await asyncio.gather(*gets) == ["v"] * 5


async def test_stall_fails_with_timeout(
    clients: Clients, server: sentinel.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, shared = clients
    monkeypatch.setattr(shared_redis, "STALL_S", 0.3)
    assert await shared.set("k", "v") is True
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(RedisTimeoutError):
            await shared.get("k")
    finally:
        server.process.send_signal(signal.SIGCONT)
    assert await shared.get("k") == "v"  # a fresh connection
