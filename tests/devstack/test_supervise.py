"""The back-off of `make run`'s supervisor (pure logic: a clock we move, real processes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tools import supervise


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _dies_at_once() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])


def test_a_child_that_keeps_dying_is_restarted_with_a_doubling_delay(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    child = supervise.Child("flaky", _dies_at_once, clock=clock)
    delays = []
    for _ in range(7):
        child.process.wait()
        child.check()  # notices the death, schedules the restart
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("habla: flaky exited with status 3; restarting in ")
        delays.append(float(line.rsplit(" ", 2)[1]))
        clock.now += delays[-1]
        child.check()  # restarts
        assert "habla: restarted flaky (pid" in capsys.readouterr().err
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    child.wait(timeout=5)


def test_the_delay_starts_again_after_a_stable_run(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    child = supervise.Child("flaky", _dies_at_once, clock=clock)
    for _ in range(3):
        child.process.wait()
        child.check()
        clock.now += 10
        child.check()
    child.process.wait()
    clock.now += supervise.STABLE_AFTER_S
    capsys.readouterr()
    child.check()
    assert "restarting in 1 s" in capsys.readouterr().err
    child.wait(timeout=5)


def test_a_child_that_cannot_start_again_is_retried_not_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    starts = []

    def start() -> subprocess.Popen[bytes]:
        starts.append(clock.now)
        if len(starts) > 1:
            raise RuntimeError("port in use")
        return _dies_at_once()

    child = supervise.Child("xmpp", start, clock=clock)
    child.process.wait()
    child.check()
    clock.now += 1
    child.check()
    assert "habla: xmpp did not start again (port in use); retrying in 2 s" in capsys.readouterr().err
    clock.now += 2
    child.check()
    assert len(starts) == 3
    child.wait(timeout=5)
