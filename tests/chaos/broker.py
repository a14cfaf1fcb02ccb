"""A private RabbitMQ node for chaos tests: killing the shared broker would break every
other test run on the machine, so these tests start (and kill) one of their own."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tools.prosody import free_port


class PrivateBroker:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="habla-rabbit-"))
        self.port = free_port()
        self.node = f"habla-chaos-{self.port}@localhost"
        (self.dir / "mnesia").mkdir()
        (self.dir / "log").mkdir()
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        # Our own env file: the system one pins NODENAME to the shared broker's.
        (self.dir / "env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        # Debian's rabbitmq-server drops privileges to the rabbitmq user.
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        for path in self.dir.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.beam_pid: int | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 90) -> None:
        with (self.dir / "out.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["rabbitmq-server"], env=self.env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = subprocess.run(
                ["rabbitmqctl", "-q", "-n", self.node, "status"], env=self.env, capture_output=True, timeout=30
            )
            if result.returncode == 0:
                # Debian's wrapper may exit while the Erlang VM runs on: remember the
                # VM's own pid, the process that really has to die.
                pid = subprocess.run(
                    ["rabbitmqctl", "-q", "-n", self.node, "eval", "os:getpid()."],
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                self.beam_pid = int(pid.stdout.strip().strip('"'))
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"private RabbitMQ exited; see {self.dir}/out.log")
            time.sleep(0.5)
        raise RuntimeError(f"private RabbitMQ did not start within {timeout_s} s; see {self.dir}/out.log")

    def stop(self) -> None:
        """A clean shutdown (what an operator's restart does): everything is flushed."""
        subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "stop"], env=self.env, capture_output=True, timeout=60)
        self.kill()  # reaps the wrapper; the VM is already gone

    def kill(self) -> None:
        """SIGKILL the whole node: no clean shutdown, no chance to flush anything."""
        if self.beam_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.beam_pid, signal.SIGKILL)
            self.beam_pid = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # epmd may still list the dead node for a moment; wait until the port is free.
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline
            and subprocess.run(
                ["rabbitmqctl", "-q", "-n", self.node, "ping"], env=self.env, capture_output=True, timeout=30
            ).returncode
            == 0
        ):
            time.sleep(0.2)

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
