"""A redis-server of a test's own, on a free port: stopped, killed, restarted, and
restarted from an older snapshot (what a Redis with ``appendonly no`` does after a
crash). The shared Redis on 6379 is never touched. Used by the chaos, gateway and
status-image outage tests. Also ``one_more_subscriber``, for tests of pub/sub listeners."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import redis
import redis.asyncio as aioredis

from tools.prosody import free_port


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="habla-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20) -> None:
        """Start (loading dump.rdb from its folder if there is one) and wait for PING."""
        self.process = subprocess.Popen(
            # --save "": no snapshots unless the test asks (snapshot()); a SIGKILL then
            # restarts from the last one the test took, as a crashed Redis would.
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir), "--logfile", "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} did not start; see {self.dir}/redis.log")
                time.sleep(0.05)
        finally:
            client.close()

    def snapshot(self) -> None:
        """Write dump.rdb now (the "older snapshot" a later restart reloads)."""
        client = redis.Redis(port=self.port, socket_timeout=10)
        try:
            client.save()
        finally:
            client.close()

    def stop(self) -> None:
        """Down as in a clean restart: the snapshot is written, then connections refused."""
        client = redis.Redis(port=self.port, socket_timeout=10)
        with contextlib.suppress(redis.exceptions.ConnectionError):
            client.shutdown(save=True)
        client.close()
        if self.process is not None:
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: nothing written since the last snapshot survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def forget_snapshot(self) -> None:
        """The next start begins empty (a Redis that lost everything)."""
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "dump.rdb").unlink()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def one_more_subscriber(client: aioredis.Redis, channel: str, deadline_s: float = 30.0) -> AsyncIterator[None]:
    """Around starting a pub/sub listener: returns once ``channel`` has one subscriber
    more than before (PUBSUB NUMSUB), so an announcement made next cannot beat the
    listener's SUBSCRIBE (a fixed sleep can, on a loaded machine). Other listeners of
    the run (session fixtures) may share the channel: hence "one more", not "one"."""

    async def count() -> int:
        return int((await client.pubsub_numsub(channel))[0][1])

    before = await count()
    yield
    deadline = time.monotonic() + deadline_s
    while await count() <= before:
        assert time.monotonic() < deadline, f"no new subscriber to {channel} within {deadline_s} s"
        await asyncio.sleep(0.02)
