"""A local Redis master + replica watched by 3 Sentinels, on free ports under a temp folder.

For the failover tests and the cluster demo (`python -m tools.sentinel`). Sentinel mode is
redis-server's own (`redis-server sentinel.conf --sentinel`, what Debian's
`redis-sentinel` runs). Each Sentinel gets a config file of its own: Sentinels rewrite it
with what they learn (the current master, the other Sentinels).

Why these numbers: `down-after-milliseconds 1000` declares a master down after 1 s
without an answer (production setups use 5-30 s; a test wants the failover quickly);
quorum 2 of 3 Sentinels must agree, so one Sentinel alone can never fail over;
`failover-timeout 5000` lets a stuck failover be retried after 5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

MASTER_NAME = "habla"
DOWN_AFTER_MS = 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One redis-server process (a data node or a Sentinel)."""

    name: str
    port: int
    dir: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    # Enters the server's host (a network namespace under `make cluster`): a restart
    # after a kill comes back on the same host.
    enter: Callable[[], AbstractContextManager[object]] | None = None

    def start(self, extra: Sequence[str] = ()) -> None:
        """Start it with its arguments, then ``extra`` (later ones win)."""
        with self.enter() if self.enter is not None else contextlib.nullcontext():
            self.process = subprocess.Popen(
                ["redis-server", *self.args, *extra],
                cwd=self.dir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(f"{self.name} did not start; see {self.dir}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL (a host that dies)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None


@dataclass
class SentinelSet:
    dir: Path
    data: list[Server] = field(default_factory=list)  # [0] starts as master
    sentinels: list[Server] = field(default_factory=list)
    master_name: str = MASTER_NAME

    @property
    def addresses(self) -> str:
        """HABLA_REDIS_SENTINELS for these Sentinels."""
        return ",".join(f"{s.host}:{s.port}" for s in self.sentinels)

    def master_port(self, timeout_s: float = 30) -> int:
        """The master's port once every running Sentinel names the same one. A Sentinel
        learns of a failover from the others' hello messages (every 2 s): acting on one
        Sentinel's stale answer could kill the replica instead of the master."""
        deadline = time.monotonic() + timeout_s
        while True:
            named: set[int] = set()
            for sentinel in self.sentinels:
                if sentinel.process is None:
                    continue
                client = redis.Redis(host=sentinel.host, port=sentinel.port, socket_timeout=1)
                try:
                    address: Any = client.execute_command(  # type: ignore[no-untyped-call]
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                    )
                    named.add(int(address[1]))
                except (redis.RedisError, TypeError, IndexError, ValueError):
                    named.add(-1)
                finally:
                    client.close()
            if len(named) == 1 and -1 not in named:
                return named.pop()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Sentinels do not agree on the master: {sorted(named)}")
            time.sleep(0.1)

    def master(self) -> Server:
        port = self.master_port()
        return next(server for server in self.data if server.port == port)

    def restart(self, server: Server) -> None:
        """A data server back after a crash, as a restart policy that asks the Sentinels
        first would start it: a replica of the master they name (a master if they name
        this one: it died before they failed over).

        Started as it was (a master), it waits for the Sentinels to turn it into a
        replica, and they take their time: a Sentinel reconfigures a replica that reports
        itself a master only once that report is 8 s old (SENTINEL_PUBLISH_PERIOD * 4,
        fixed in sentinel.c) and it learns the role from its INFO of the server, asked
        every 10 s (SENTINEL_INFO_PERIOD): 8-18 s from the restart to their REPLICAOF
        (11 s in a netns run, the replica in sync 18.8 s after the kill), all of it time
        in which the promoted master has no replica and every chat line's `WAIT 1` fails
        (libs/common/state/replicas.py). Asking first: in sync 0.2 s after the restart."""
        master = self.master()
        server.start(
            ["--replicaof", "no", "one"] if master is server else ["--replicaof", master.host, str(master.port)]
        )

    def failover(self, timeout_s: float = 30) -> None:
        """SENTINEL FAILOVER: a replica is promoted and the old master demoted (planned).

        Retried while the Sentinel answers NOGOODSLAVE: it promotes only a replica it has
        seen as one in an INFO reply of the last few seconds (asked every 10 s, once a
        second during a failover), so a replica that is in sync by its own INFO can still
        be unknown to it for a while after a restart (seen in a cluster run at load 9)."""
        first = self.sentinels[0]
        client = redis.Redis(host=first.host, port=first.port, socket_timeout=5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.execute_command("SENTINEL", "FAILOVER", self.master_name)  # type: ignore[no-untyped-call]
                    return
                except redis.exceptions.ResponseError as exc:
                    if not str(exc).startswith("NOGOODSLAVE") or time.monotonic() > deadline:
                        raise
                time.sleep(0.5)
        finally:
            client.close()

    def wait_for_new_master(self, old_port: int, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                port = self.master_port(timeout_s=1)
                if port != old_port:
                    return port
            time.sleep(0.1)
        raise RuntimeError(f"no failover all Sentinels agree on within {timeout_s} s")

    def wait_replica_in_sync(self, port: int, timeout_s: float = 30) -> None:
        """Until the server on ``port`` is a replica whose link to its master is up (its
        full copy loaded): what an operator checks before a planned failover."""
        host = next(server.host for server in self.data if server.port == port)
        client = redis.Redis(host=host, port=port, socket_timeout=1, decode_responses=True)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    info: Any = client.info("replication")
                    if (
                        info.get("role") == "slave"
                        and info.get("master_link_status") == "up"
                        and self._sentinels_see_in_sync(port)
                    ):
                        return
                time.sleep(0.1)
        finally:
            client.close()
        raise RuntimeError(f"{host}:{port} did not become an in-sync replica within {timeout_s} s")

    def _sentinels_see_in_sync(self, port: int) -> bool:
        """Does every Sentinel's own view (from its last INFO of the server, asked every
        10 s) list ``port`` as a replica with its link up? SENTINEL FAILOVER promotes
        only such a replica; the server's INFO can say so seconds earlier."""
        for sentinel in self.sentinels:
            client = redis.Redis(host=sentinel.host, port=sentinel.port, socket_timeout=1, decode_responses=True)
            try:
                replicas: Any = client.execute_command("SENTINEL", "REPLICAS", self.master_name)  # type: ignore[no-untyped-call]
            except redis.RedisError:
                return False
            finally:
                client.close()
            seen = [dict(zip(r[::2], r[1::2], strict=False)) if isinstance(r, list) else r for r in replicas]
            if not any(
                int(r.get("port", 0)) == port and r.get("flags") == "slave" and r.get("master-link-status") == "ok"
                for r in seen
            ):
                return False
        return True

    def close(self) -> None:
        for server in [*self.sentinels, *self.data]:
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _data_args(port: int, replica_of: tuple[str, int] | None, host: str = "127.0.0.1") -> list[str]:
    args = [
        *("--port", str(port), "--bind", host, "--save", "", "--appendonly", "no"),
        *("--dir", ".", "--logfile", "redis.log", "--daemonize", "no"),
        # A replica asking for a full copy gets it at once: Redis 7's default waits 5 s
        # for more replicas to share one diskless transfer (there is one), and while
        # the replica waits the master has none, so every chat line's WAIT 1 fails.
        *("--repl-diskless-sync-delay", "0"),
    ]
    if replica_of is not None:
        args += ["--replicaof", replica_of[0], str(replica_of[1])]
    if host != "127.0.0.1":
        args += ["--protected-mode", "no"]  # see SENTINEL_CONF
    return args


SENTINEL_CONF = """\
# Generated by tools/sentinel.py; the Sentinel rewrites it with what it learns.
port {port}
bind {host}
daemonize no
logfile sentinel.log
dir .
# No password: off loopback (a `make cluster` host) only protected-mode no lets others in.
protected-mode {protected}
sentinel monitor {name} {master_host} {master_port} 2
sentinel down-after-milliseconds {name} {down_after}
sentinel failover-timeout {name} 5000
sentinel parallel-syncs {name} 1
"""


def start(
    replicas: int = 1,
    sentinels: int = 3,
    host: str = "127.0.0.1",
    data_hosts: Sequence[str] = (),
    sentinel_hosts: Sequence[str] = (),
    inside: Callable[[str], AbstractContextManager[object]] | None = None,
) -> SentinelSet:
    """Start a master, `replicas` replicas and `sentinels` Sentinels (close() removes all),
    all bound to ``host`` (loopback by default). ``data_hosts`` / ``sentinel_hosts``: one
    address per server instead, each on a host of its own whose network ``inside(address)``
    enters (`make cluster`: the master's host can die without taking a Sentinel with it)."""
    group = SentinelSet(Path(tempfile.mkdtemp(prefix="habla-sentinel-")))
    data_at = list(data_hosts) or [host] * (replicas + 1)
    sentinel_at = list(sentinel_hosts) or [host] * sentinels
    assert len(data_at) == replicas + 1 and len(sentinel_at) == sentinels
    taken: set[int] = set()

    def port_of_its_own() -> int:
        # Distinct across the set even on different hosts: tests and tools name a server
        # by its port (the Sentinels' GET-MASTER-ADDR-BY-NAME answer).
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    def enter(address: str) -> Callable[[], AbstractContextManager[object]] | None:
        return None if inside is None else lambda: inside(address)

    try:
        master_port = port_of_its_own()
        master_host = data_at[0]
        for i in range(replicas + 1):
            port = master_port if i == 0 else port_of_its_own()
            folder = group.dir / f"redis{i}"
            folder.mkdir()
            args = _data_args(port, None if i == 0 else (master_host, master_port), data_at[i])
            server = Server(f"redis{i}", port, folder, args, host=data_at[i], enter=enter(data_at[i]))
            server.start()
            group.data.append(server)
        for i in range(sentinels):
            port = port_of_its_own()
            folder = group.dir / f"sentinel{i}"
            folder.mkdir()
            conf = SENTINEL_CONF.format(
                port=port,
                name=group.master_name,
                master_host=master_host,
                master_port=master_port,
                down_after=DOWN_AFTER_MS,
                host=sentinel_at[i],
                protected="yes" if sentinel_at[i] == "127.0.0.1" else "no",
            )
            (folder / "sentinel.conf").write_text(conf)
            args = [str(folder / "sentinel.conf"), "--sentinel"]
            server = Server(f"sentinel{i}", port, folder, args, host=sentinel_at[i], enter=enter(sentinel_at[i]))
            server.start()
            group.sentinels.append(server)
        _wait_replicas_known(group, replicas)
    except BaseException:
        group.close()
        raise
    return group


def _wait_replicas_known(group: SentinelSet, replicas: int, timeout_s: float = 30) -> None:
    # A Sentinel learns replicas from the master's INFO (every 10 s at first) and the
    # other Sentinels over hello messages (every 2 s): fail over only once all know.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = 0
        for sentinel in group.sentinels:
            client = redis.Redis(host=sentinel.host, port=sentinel.port, socket_timeout=1, decode_responses=True)
            try:
                state: Any = client.sentinel_master(group.master_name)
                if (
                    int(state["num-slaves"]) >= replicas
                    and int(state["num-other-sentinels"]) >= len(group.sentinels) - 1
                ):
                    ready += 1
            except redis.RedisError:
                pass
            finally:
                client.close()
        if ready == len(group.sentinels):
            return
        time.sleep(0.2)
    raise RuntimeError("the Sentinels did not discover each other and the replicas in time")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run Redis master + replica + 3 Sentinels until Ctrl-C.")
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    group = start(args.replicas)
    try:
        print(f"master 127.0.0.1:{group.data[0].port}, replicas {[s.port for s in group.data[1:]]}, under {group.dir}")
        print(f"HABLA_REDIS_SENTINELS={group.addresses}")
        print(f"HABLA_REDIS_MASTER_NAME={group.master_name}")
        print("HABLA_REDIS_WAIT_MS=1000")
        print("Ctrl-C stops every server and removes the folder.", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        group.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
