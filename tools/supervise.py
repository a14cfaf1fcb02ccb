"""Keep `make run`'s child processes alive: report a death, restart with a back-off.

A service that dies under `make run` (the OOM killer, an unhandled error, a lost
dependency it gave up on) used to stay dead while the rest looked healthy. Each child is
restarted after a delay that doubles on every quick death (1 s up to 30 s), so a service
that cannot start does not spin, and is reset once the child has stayed up for a while.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
# A child that has run this long is taken to be healthy again: its next death starts
# the back-off from FIRST_DELAY_S.
STABLE_AFTER_S = 60.0


def _say(line: str) -> None:
    print(f"habla: {line}", file=sys.stderr, flush=True)


class Child:
    """One supervised process; `restart=False` for those `make run` cannot restart."""

    def __init__(
        self,
        name: str,
        start: Callable[[], subprocess.Popen[bytes]],
        *,
        restart: bool = True,
        running: subprocess.Popen[bytes] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._start = start
        self._restart = restart
        self._clock = clock
        self._delay = FIRST_DELAY_S
        self._restart_at: float | None = None
        # `running`: already started by the caller (who had to wait for it to be ready).
        self.process = running or start()
        self._started_at = clock()
        _say(f"started {name} (pid {self.process.pid})")

    def check(self) -> None:
        """Call often: notices a death, and restarts when its back-off has passed."""
        now = self._clock()
        if self._restart_at is not None:
            if now >= self._restart_at:
                self._restart_at = None
                try:
                    self.process = self._start()
                except (OSError, RuntimeError) as exc:
                    _say(f"{self.name} did not start again ({exc}); retrying in {self._delay:g} s")
                    self._back_off(now)
                    return
                self._started_at = now
                _say(f"restarted {self.name} (pid {self.process.pid})")
            return
        status = self.process.poll()
        if status is None:
            return
        if not self._restart:
            if self._started_at >= 0:
                _say(f"{self.name} exited with status {status}; `make run` cannot restart it")
                self._started_at = -1.0
            return
        if now - self._started_at >= STABLE_AFTER_S:
            self._delay = FIRST_DELAY_S
        _say(f"{self.name} exited with status {status}; restarting in {self._delay:g} s")
        self._back_off(now)

    def _back_off(self, now: float) -> None:
        self._restart_at = now + self._delay
        self._delay = min(self._delay * 2, MAX_DELAY_S)

    def stop(self) -> None:
        self._restart_at = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_until_signalled(children: Sequence[Child], poll_s: float = 0.5) -> None:
    """Supervise until SIGINT/SIGTERM, then stop everything (last started first)."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        for child in children:
            child.check()
        time.sleep(poll_s)
    _say("stopping …")
    for child in reversed(children):
        child.stop()
    for child in children:
        child.wait(timeout=10)
