"""Starting and stopping the servers the tools run in the foreground (nginx, HAProxy,
Prosody, MariaDB): a config checked before the start, ready once it listens, a stop that
waits and kills only what will not end."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Sequence


def listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def start_checked(
    name: str,
    check: Sequence[str],
    command: Sequence[str],
    ready: Callable[[], bool],
    wait_s: float,
    hint: str = "",
) -> subprocess.Popen[bytes]:
    """``check`` (the server's own config test) must pass; then ``command`` runs until
    ``ready()``. A refused config or a server that exits or is not ready in time raises
    with what the server said (``hint``: where its own log is)."""
    result = subprocess.run(list(check), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{name} rejected its config: {result.stderr.strip()}")
    process = subprocess.Popen(list(command), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + wait_s
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{name} did not start (status {process.poll()}){hint}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (each of these servers' clean stop), SIGKILL after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
