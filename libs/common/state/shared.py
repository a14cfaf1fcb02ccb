"""Every service's plain Redis commands on one shared, pipelined connection
(``state.connect`` returns a SharedConnection over the pool it builds).

redis-py's pooled client spends 60-80 µs of CPU per command on this machine around a
round trip Redis itself answers in microseconds: the blocking pool's condition and
timeout, the connection check on every checkout, the retry wrapper, observability
records, one send system call per command (in the frontend a fifth of a page view's
CPU). Here every caller's command goes out on one connection: the commands asked for
in one event-loop pass are written together, and one reader task hands the answers
back in order (Redis answers a connection's commands in the order it got them). Measured at 20 callers at once: 21
µs of CPU per script call instead of 81, 10 µs per GET instead of 71.

What stays with the pool (``connection_pool``): blocking commands (BLPOP, XREAD …),
which would hold every other caller up; commands that change or depend on the
connection's own state (MULTI/WATCH outside a pipeline, SELECT, CLIENT …, HELLO, WAIT);
transactions (pipelines with MULTI/EXEC or WATCH), pub/sub and ``client()``, which take
connections of their own; commands asking for raw bytes (NEVER_DECODE). A plain
pipeline (``transaction=False``) is a batch of plain commands: it goes out in one
piece on the shared connection (SharedPipeline). WAIT counts the replicas that have *its own
connection's* writes, so writes to be confirmed go on one ``client()`` connection
together with their WAIT (libs.common.state.replicas), never on this one. Scripts run
here (a NOSCRIPT answer is an ordinary error answer: redis-py's Script loads the script
and sends it again), and so does ``lock()`` (SET NX and scripts; its wait is a sleep in
the caller). The connection is the pool's kind (same address or Sentinels' master,
credentials, database, decoding); nothing sent here SELECTs. redis-py's health check (a
PING before a command on a connection idle 30 s) is not done here: its answer would
come among the callers'; a dead connection shows as a failed read or a stall instead.
Redis runs commands one at a time anyway, so sharing a connection delays nobody on the
server; a large answer is read by the one reader instead of by the caller.

Failures are those of the pool: an answer that cannot be read (Redis restarted, a
Sentinel demoted the master: redis-py's SentinelManagedConnection disconnects on a
READONLY answer and raises ConnectionError from the read) fails every command waiting
on the connection with ConnectionError, and each is sent once more on a fresh
connection, which asks the Sentinels where the master is now (the pool's
one immediate retry; every write of ours is safe to repeat, see state.connect); a
connection on which the oldest command waited STALL_S without an answer is dropped
and its commands fail with TimeoutError (the pool had no read timeout at all). Both
are outages to the handlers (503 and Retry-After). Commands that ``aclose()`` cuts short
(waiting for their answers or for the connection to open) fail with ClientClosedError, a
ConnectionError, and are not sent again: a retry, or an opening that finished after the
close, would leave a connection (and its reader task) that nobody closes.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import math
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Commands that wait on the server, or change or depend on the connection's own state:
# a shared connection must never carry them. Matched on the command's first word, in
# capitals: redis-py sends some as one string ("CLIENT SETNAME"), and callers of
# execute_command may write them in lower case.
POOL_ONLY = frozenset(
    {
        "WAIT",
        "WAITAOF",
        "BLPOP",
        "BRPOP",
        "BLMOVE",
        "BRPOPLPUSH",
        "BLMPOP",
        "BZPOPMIN",
        "BZPOPMAX",
        "BZMPOP",
        "XREAD",
        "XREADGROUP",
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "MONITOR",
        "MULTI",
        "EXEC",
        "DISCARD",
        "WATCH",
        "UNWATCH",
        "SELECT",
        "CLIENT",
        "HELLO",
        "AUTH",
        "RESET",
        "QUIT",
        "UNSUBSCRIBE",
        "PUNSUBSCRIBE",
        "SUNSUBSCRIBE",
        "READONLY",
        "READWRITE",
        "SYNC",
        "PSYNC",
        "REPLCONF",
        "SHUTDOWN",
    }
)
# execute_command's first argument -> whether it goes to the pool (POOL_ONLY by first
# word), memoised: callers pass a few dozen literal names, looked up per command.
_ON_POOL: dict[Any, bool] = {}


def _on_pool(command: Any) -> bool:
    on_pool = _ON_POOL.get(command)
    if on_pool is None:
        name = command.decode() if isinstance(command, bytes) else str(command)
        on_pool = name.split(" ", 1)[0].upper() in POOL_ONLY
        if len(_ON_POOL) < 1024:  # bounded, should a caller build names on the fly
            _ON_POOL[command] = on_pool
    return on_pool


class ClientClosedError(RedisConnectionError):
    """A command cut short by ``aclose()``: not sent again (a retry would open a
    connection after the close, which nobody would close)."""


# The oldest command waiting this long without an answer drops the connection (as
# long as state.CONNECTION_WAIT_S, the pool's wait for a connection).
STALL_S = 5.0


class SharedConnection(aioredis.Redis):
    """A Redis client (same pool, same answers) whose plain commands share one
    connection. ``state.connect`` builds it with ``from_pool`` (``aclose`` closes the
    shared connection and the pool); ``SharedConnection(connection_pool=pool)`` shares
    a pool another client owns (``aclose`` closes only the shared connection)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conn: AbstractConnection | None = None
        self._opening = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        # (answer, deadline) per command sent on _conn, in the order sent.
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []  # packed commands not written yet
        self._flush: asyncio.Handle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        # Counts aclose() calls: a connection whose opening an aclose() overlapped is closed
        # at once instead of kept (the client stays usable after aclose, as redis-py's).
        self._closes = 0
        # SHA1s of the scripts SharedPipeline has loaded (forgotten on NOSCRIPT).
        self._scripts_loaded: set[str] = set()

    @classmethod
    def from_pool(cls, connection_pool: aioredis.ConnectionPool) -> SharedConnection:
        """A client that owns ``connection_pool`` (redis-py's from_pool, typed)."""
        client = cls(connection_pool=connection_pool)
        client.auto_close_connection_pool = True
        return client

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.single_connection_client or _on_pool(args[0]) or NEVER_DECODE in options:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        try:
            try:
                response = await self._round_trip(args)
            except ClientClosedError:
                raise
            except RedisConnectionError:
                response = await self._round_trip(args)  # once more, on a fresh connection
        except ResponseError:
            if EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            raise
        return await self._parsed(args[0], response, options)

    async def _parsed(self, command: Any, response: Any, options: dict[str, Any]) -> Any:
        """``response`` through redis-py's callback for ``command`` (as parse_response)."""
        if command in self.response_callbacks:
            options.pop(EMPTY_RESPONSE, None)
            options.pop("keys", None)
            parsed = self.response_callbacks[command](response, **options)
            return await parsed if inspect.isawaitable(parsed) else parsed
        return response

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        if self.single_connection_client:
            return super().pipeline(transaction, shard_hint)
        return SharedPipeline(self, transaction, shard_hint)

    async def _round_trip(self, args: tuple[Any, ...]) -> Any:
        if self._conn is None:
            await self._connect()
        return await self._send([args])[0]

    async def _round_trips(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command's answer, or its error answer as an exception (not raised); the
        commands go out together, in order, on the shared connection."""
        if self._conn is None:
            await self._connect()
        answers = self._send(commands)
        results: list[Any] = []
        try:
            for answer in answers:
                try:
                    results.append(await answer)
                except ResponseError as exc:
                    results.append(exc)
        except BaseException:
            for answer in answers:  # nobody will read them: not "exception never retrieved"
                answer.cancel()
            raise
        return results

    def _send(self, commands: list[tuple[Any, ...]]) -> list[asyncio.Future[Any]]:
        conn = self._conn
        if conn is None:
            raise RedisConnectionError("Redis connection closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALL_S
        answers = [loop.create_future() for _ in commands]
        self._waiting.extend((answer, deadline) for answer in answers)
        self._out += conn.pack_commands(commands) if len(commands) > 1 else conn.pack_command(*commands[0])
        if self._flush is None:  # everything asked for in this loop pass goes in one write
            self._flush = loop.call_soon(self._write, conn)
        if self._watchdog is None:
            self._watchdog = loop.call_later(STALL_S, self._check_stall)
        return answers

    async def _connect(self) -> AbstractConnection:
        closes = self._closes  # counted when the command asked, not when the lock is free
        async with self._opening:
            if self._conn is None:
                if self._closes != closes:
                    raise ClientClosedError("Redis client closed")
                # The pool's own kind of connection: same address (the Sentinels' master),
                # credentials, database and decoding; not counted in the pool's.
                conn = self.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                await conn.connect()
                if self._closes != closes:  # aclose() ran meanwhile: not kept
                    await conn.disconnect(nowait=True)
                    raise ClientClosedError("Redis client closed")
                self._conn = conn
                self._reader = asyncio.create_task(self._read(conn))
            return self._conn

    def _write(self, conn: AbstractConnection) -> None:
        self._flush = None
        out, self._out = self._out, []
        if conn is not self._conn:
            return  # dropped meanwhile: its commands have failed already
        writer = conn._writer  # the connection's stream, as its own send_packed_command uses
        if writer is None:
            self._drop(conn, RedisConnectionError("Redis connection closed"))
            return
        writer.writelines(out)  # a transport error reaches the reader as a failed read

    async def _read(self, conn: AbstractConnection) -> None:
        try:
            while True:
                error: ResponseError | None = None
                try:
                    response = await conn.read_response(timeout=math.inf)
                except ResponseError as exc:  # an error answer: that command's, the stream is fine
                    response, error = None, exc
                if not self._waiting:
                    raise RedisConnectionError("Redis sent an answer nobody asked for")
                answer, _ = self._waiting.popleft()
                if answer.done():  # its caller gave up (cancelled)
                    continue
                if error is not None:
                    answer.set_exception(error)
                else:
                    answer.set_result(response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = exc if isinstance(exc, RedisConnectionError | RedisTimeoutError) else None
            self._drop(conn, failure or RedisConnectionError(f"reading from Redis failed: {exc!r}"))

    def _check_stall(self) -> None:
        self._watchdog = None
        if not self._waiting or self._conn is None:
            return
        loop = asyncio.get_running_loop()
        deadline = self._waiting[0][1]
        if loop.time() >= deadline:
            self._drop(self._conn, RedisTimeoutError(f"Redis did not answer within {STALL_S:g} s"))
        else:
            self._watchdog = loop.call_later(deadline - loop.time(), self._check_stall)

    def _drop(self, conn: AbstractConnection, failure: Exception) -> None:
        """Fail every command waiting on ``conn`` with ``failure``; the next opens anew."""
        if conn is not self._conn:
            return
        self._conn = None
        self._scripts_loaded.clear()  # the next connection may reach a restarted or new master
        waiting, self._waiting = self._waiting, collections.deque()
        self._out = []
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for answer, _ in waiting:
            if not answer.done():
                answer.set_exception(type(failure)(*failure.args))
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        closing = asyncio.create_task(conn.disconnect(nowait=True))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self._closes += 1
        reader = self._reader
        if self._conn is not None:
            self._drop(self._conn, ClientClosedError("Redis client closed"))
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await super().aclose(close_connection_pool)


class SharedPipeline(Pipeline):
    """A pipeline whose commands, when it is a plain batch (``transaction=False``, no
    WATCH or MULTI, nothing that must go to the pool), go out together on the shared
    connection: no pool checkout, and one write with whatever else this loop pass
    sends. Anything else runs as redis-py's pipeline on a pool connection.

    Answers are those of redis-py's pipeline: error answers in the list, the first
    raised when ``raise_on_error``; a ConnectionError sends the batch once more (the
    pool's retry of a non-transactional pipeline). Scripts: redis-py asks SCRIPT
    EXISTS before every such pipeline (a round trip each time); here the scripts this
    connection has loaded are remembered, and a NOSCRIPT answer (Redis restarted or
    flushed) loads them and sends the batch once more, as the retry after a lost
    connection does: every write of ours is safe to repeat (see state.connect)."""

    def __init__(self, shared: SharedConnection, transaction: bool, shard_hint: str | None) -> None:
        super().__init__(shared.connection_pool, shared.response_callbacks, transaction, shard_hint)
        self._shared = shared

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = self.command_stack
        if (
            not stack
            or self.is_transaction
            or self.explicit_transaction
            or self.watching
            or self.connection is not None
            or any(_on_pool(args[0]) or NEVER_DECODE in options for args, options in stack)
        ):
            return await super().execute(raise_on_error)
        shared = self._shared
        try:
            commands = [args for args, _ in stack]
            retried_connection = retried_noscript = False
            while True:
                if self.scripts:
                    await self._load_scripts()
                try:
                    answers = await shared._round_trips(commands)
                except ClientClosedError:
                    raise
                except RedisConnectionError:
                    if retried_connection:
                        raise
                    retried_connection = True  # once more, on a fresh connection
                    continue
                if self.scripts and not retried_noscript and any(isinstance(a, NoScriptError) for a in answers):
                    retried_noscript = True
                    shared._scripts_loaded.clear()
                    continue
                break
            response: list[Any] = []
            for (args, options), answer in zip(stack, answers, strict=True):
                if isinstance(answer, ResponseError):
                    response.append(options.get(EMPTY_RESPONSE, answer))
                else:
                    try:
                        response.append(await shared._parsed(args[0], answer, dict(options)))
                    except ResponseError as exc:
                        response.append(exc)
            if raise_on_error:
                self.raise_first_error(stack, response)
            return response
        finally:
            await self.reset()  # type: ignore[no-untyped-call]

    async def _load_scripts(self) -> None:
        loaded = self._shared._scripts_loaded
        for script in self.scripts:
            if script.sha not in loaded:
                script.sha = await self._shared.script_load(script.script)
                loaded.add(script.sha)
