"""HABLA_FRONTEND_PROCESSES > 1: one frontend process per core on the same port.

Python runs one core per process, so `python -m services.rpc_frontend` with N > 1
becomes a small supervisor of N frontend processes (this module), each a whole frontend
as with N = 1 (its own Redis and AMQP connections, its own delivery queue
``<HABLA_FRONTEND_ID>-<n>``), all listening on the same address with SO_REUSEPORT, so
the kernel spreads connections between them. To everything else they are N instances
behind a load balancer, which the frontend already supports (a visitor's session names
the instance holding its connection). SIGTERM or SIGINT to the supervisor is passed on
to every process, which drains as one frontend does; one that dies otherwise is
started again after RESTART_DELAY_S.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from libs.common.settings import Settings

log = logging.getLogger("services.rpc_frontend")

# Set in each process the supervisor starts: its number (0 … N-1), so it serves
# instead of supervising.
WORKER_ENV = "HABLA_FRONTEND_WORKER"
RESTART_DELAY_S = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# How long the processes get to drain after SIGTERM before they are killed: their own
# drain (HABLA_DRAIN_S) plus the requests' DRAIN_S, with room to spare.
STOP_GRACE_S = 30.0


def worker_number() -> int | None:
    """This process's number if a supervisor started it, else None."""
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw is not None and raw.isdigit() else None


def worker_id(settings: Settings, number: int) -> str:
    return f"{settings.frontend_id}-{number}"


def supervise(settings: Settings) -> int:
    """Start ``settings.frontend_processes`` frontends and keep them running until
    SIGTERM/SIGINT; returns the exit status (0 when every one stopped cleanly)."""
    count = settings.frontend_processes
    stopping = False

    def start(number: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, WORKER_ENV: str(number), "HABLA_FRONTEND_ID": worker_id(settings, number)}
        return subprocess.Popen([sys.executable, "-m", "services.rpc_frontend"], env=env, preexec_fn=_die_with_parent)

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    children = [start(n) for n in range(count)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("rpc_frontend processes started", extra={"processes": count, "pids": [c.pid for c in children]})
    while not stopping:
        time.sleep(0.2)
        for number, child in enumerate(children):
            if child.poll() is not None and not stopping:
                log.error("rpc_frontend process exited; starting it again", extra={"code": child.returncode})
                time.sleep(RESTART_DELAY_S)
                children[number] = start(number)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("rpc_frontend process did not stop in time; killing it", extra={"pid": child.pid})
            child.kill()
            child.wait()
    return 0 if all(child.returncode == 0 for child in children) else 1


def _die_with_parent() -> None:
    """In the new process: SIGTERM it if the supervisor dies (even by SIGKILL), so no
    frontend is left serving without one (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own SIGTERM handling still stops them
