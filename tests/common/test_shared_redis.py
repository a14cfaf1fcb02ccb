"""The shared Redis connection every service's client uses (libs/common/state/shared.py,
returned by state.connect) against a redis-server of the test's own: the same answers
as the pooled client, each caller its own answer, error answers that leave the
connection usable, outages (a killed or stopped server) that fail as the pool's did,
then recover; what must not share the connection takes a pool connection; aclose
closes both."""

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
from libs.common.state import shared as shared_module
from libs.common.state.shared import SharedConnection
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
    shared = state.connect(dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{server.port}/0"))
    # A plain client over the same pool: every command takes a pool connection.
    pooled = aioredis.Redis(connection_pool=shared.connection_pool)
    try:
        yield pooled, shared
    finally:
        await shared.aclose()  # and the pool: state.connect's client owns it


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
    monkeypatch.setattr(shared_module, "STALL_S", 0.3)
    assert await shared.set("k", "v") is True
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(RedisTimeoutError):
            await shared.get("k")
    finally:
        server.process.send_signal(signal.SIGCONT)
    assert await shared.get("k") == "v"  # a fresh connection


async def test_connect_returns_one_shared_connection_and_aclose_closes_both(
    settings: Settings, server: sentinel.Server
) -> None:
    client = state.connect(dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{server.port}/0"))
    assert isinstance(client, SharedConnection)
    watcher = aioredis.Redis(port=server.port, decode_responses=True)  # not the client's pool
    try:
        await asyncio.gather(*(client.incr("n") for _ in range(50)))
        async with client.pipeline(transaction=True) as pipe:  # MULTI/EXEC: a pool connection
            pipe.get("n")
            assert await pipe.execute() == ["50"]
        others = [c for c in await watcher.client_list() if c["cmd"] != "client|list"]
        assert len(others) == 2  # the shared connection and the transaction's
        await client.aclose()
        assert [c for c in await watcher.client_list() if c["cmd"] != "client|list"] == []
    finally:
        await watcher.aclose()


async def test_connection_state_goes_to_the_pool(clients: Clients) -> None:
    """CLIENT SETNAME arrives as one string ("CLIENT SETNAME"), and execute_command may
    be given lower case: both are matched by first word, so the shared connection never
    carries them (it keeps no name, and is not the connection that waits)."""
    pooled, shared = clients
    assert await shared.client_setname("named") is True
    await shared.execute_command("client setname", "named-too")
    assert await shared.get("k") is None
    seen = {c["cmd"]: c["name"] for c in await pooled.client_list()}
    assert seen["get"] == ""  # the shared connection's last command, and no name
    waiting: asyncio.Future[Any] = asyncio.ensure_future(shared.execute_command("blpop", "empty-list", 5))
    await asyncio.sleep(0.1)
    assert await shared.get("k") is None  # answered while BLPOP waits elsewhere
    await shared.rpush("empty-list", "x")
    assert list(await waiting) == ["empty-list", "x"]


async def test_transactions_locks_pubsub_raw_bytes_and_single_connections(clients: Clients) -> None:
    _, shared = clients
    await shared.set("w", "1")
    async with shared.pipeline(transaction=True) as pipe:  # WATCH/MULTI on a pool connection
        await pipe.watch("w")
        value = await pipe.get("w")
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.set("w", str(int(str(value)) + 1))
        assert await pipe.execute() == [True]
    assert await shared.get("w") == "2"
    async with shared.lock("a-lock", timeout=5, blocking_timeout=2):
        assert await shared.exists("a-lock") == 1
    assert await shared.exists("a-lock") == 0
    assert isinstance(await shared.dump("w"), bytes)  # NEVER_DECODE: the pool's raw answer
    listener = shared.pubsub(ignore_subscribe_messages=True)
    await listener.subscribe("channel")
    assert await shared.publish("channel", "hello") == 1
    message = None
    for _ in range(50):  # the subscribe confirmation is read (and ignored) first
        message = message or await listener.get_message(timeout=0.1)
    assert message is not None and message["data"] == "hello"
    await listener.aclose()  # type: ignore[no-untyped-call]
    async with shared.client() as single:  # one pool connection: WAIT counts its writes
        assert await single.set("w", "3") is True
        assert await single.execute_command("WAIT", 0, 10) == 0  # type: ignore[no-untyped-call]
    assert await shared.get("w") == "3"


async def test_plain_pipelines_go_on_the_shared_connection(clients: Clients, server: sentinel.Server) -> None:
    """transaction=False: one batch on the shared connection, answered as redis-py's
    pipeline answers (callbacks, error answers in place or raised), scripts loaded once
    and again after a NOSCRIPT, a lost connection retried once."""
    pooled, shared = clients
    script = shared.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")

    async def batch(raise_on_error: bool = True) -> list[Any]:
        async with shared.pipeline(transaction=False) as pipe:
            pipe.set("s", "x")
            pipe.hset("h", mapping={"a": "1"})
            pipe.hgetall("h")
            pipe.hget("s", "f")  # WRONGTYPE
            await script(keys=["n"], args=[2], client=pipe)
            pipe.exists("s", "h", "missing")
            return await pipe.execute(raise_on_error=raise_on_error)

    answers = await batch(raise_on_error=False)
    assert answers[:3] == [True, 1, {"a": "1"}] and answers[4:] == [2, 2]
    assert isinstance(answers[3], ResponseError) and "WRONGTYPE" in str(answers[3])
    with pytest.raises(ResponseError, match="Command # 4"):
        await batch()
    seen = [c for c in await pooled.client_list() if c["cmd"] != "client|list"]
    assert len(seen) == 1 and seen[0]["cmd"] in {"exists", "evalsha"}  # the shared connection only
    await pooled.script_flush()  # NOSCRIPT: loaded again and the batch sent once more
    assert (await batch(raise_on_error=False))[4] == 6  # 4 + 2: the NOSCRIPT attempt ran no INCRBY
    server.kill()
    server.start()
    assert (await batch(raise_on_error=False))[4] == 2  # a fresh connection, the script loaded again
    results = await asyncio.gather(*(batch(raise_on_error=False) for _ in range(20)))
    assert sorted(r[4] for r in results) == list(range(4, 44, 2))


async def test_aclose_while_the_connection_opens_leaves_nothing_open(
    settings: Settings, server: sentinel.Server
) -> None:
    """aclose() while commands wait for the shared connection to open (or for their
    answers): the commands fail with ConnectionError or are answered, and no connection
    stays open (before, the opening finished after aclose and was kept, with its reader
    task: an unclosed connection once the client was collected; a command the close
    cut short was also sent again, on a connection opened after the close)."""
    watcher = aioredis.Redis(port=server.port, decode_responses=True)  # not the client's pool
    try:
        for passes in range(1, 16):
            client = state.connect(dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{server.port}/0"))
            gets: list[asyncio.Future[Any]] = [asyncio.ensure_future(client.get("k")) for _ in range(3)]
            for _ in range(passes):
                await asyncio.sleep(0)
            await client.aclose()
            for result in await asyncio.gather(*gets, return_exceptions=True):
                assert result is None or isinstance(result, RedisConnectionError), (passes, result)
            assert client._conn is None and client._reader is None, f"open after {passes} loop passes"
            assert [c for c in await watcher.client_list() if c["cmd"] != "client|list"] == [], passes
    finally:
        await watcher.aclose()
