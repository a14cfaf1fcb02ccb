"""A pyinstrument profile of one rpc_frontend process under widget boots.

A second frontend of the same stack (same vhost, Redis prefix and database; its own
port and delivery queue) runs under `python -m pyinstrument`; the same wrk load as the
boots phase runs against it for the given seconds, then SIGINT stops it and
pyinstrument writes the session. Printed: where the time inside event-loop callbacks
goes, by owner (Habla's modules, each library, socket calls), and the call tree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bench_status import free_port
from bench.e2e_http import BOOT_BODY, load, wait_post
from libs.common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TREE_LINES = 60
# Kept after the run (one file, overwritten by the next) for other views of it:
# .venv/bin/python -m pyinstrument --load=/tmp/habla-bench-e2e-frontend.pyisession -r html
SESSION = Path(tempfile.gettempdir()) / "habla-bench-e2e-frontend.pyisession"


async def widget_boots(settings: Settings, site_id: str, connections: int, seconds: float) -> list[str]:
    port = free_port()
    own = dataclasses.replace(
        settings,
        frontend_port=port,
        frontend_id=f"{settings.frontend_id}-profiled",
        public_url=f"http://127.0.0.1:{port}",
    )
    session = SESSION
    command = [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(session)]
    process = await asyncio.to_thread(
        subprocess.Popen, [*command, "-m", "services.rpc_frontend"], cwd=ROOT, env=own.to_env()
    )
    try:
        url = f"http://127.0.0.1:{port}/api/sites/{site_id}/session"
        await asyncio.to_thread(wait_post, url, process)
        result = await load(url, [BOOT_BODY], connections, seconds)
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.to_thread(process.wait, 30)

    def render(*options: str) -> list[str]:
        command = [sys.executable, "-m", "pyinstrument", f"--load={session}", "-r", "text", "--no-color", *options]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()

    tree = render("-p", "processor_options.filter_threshold=0.02")
    start = next((i for i, line in enumerate(tree) if "main  services/rpc_frontend/__main__.py" in line), 0)
    return [
        f"pyinstrument: rpc_frontend under widget boots ({result.rate:.0f}/s while profiled, {seconds:g} s, "
        f"{connections} at once; wall-clock samples, session kept in {session})",
        *where_time_goes(session),
        "  call tree of the requests (frames >= 2% of samples; libraries folded):",
        *tree[start : start + TREE_LINES],
    ]


def where_time_goes(session_file: Path) -> list[str]:
    """Time inside event-loop callbacks (the requests' work), grouped by who spent it:
    Habla's code, each library, the socket calls; plus time idle in epoll."""
    from pyinstrument.session import Session

    root = Session.load(str(session_file)).root_frame()
    if root is None:
        return ["  (no samples)"]
    buckets: dict[str, float] = {}
    idle = 0.0

    def walk(frame: Any, in_callback: bool) -> None:
        nonlocal idle
        # asyncio's Handle._run runs one callback: a request handler's step, a read, a timer.
        runs_callback = frame.function in ("Handle._run", "_run") and frame.file_path.endswith("asyncio/events.py")
        in_callback = in_callback or runs_callback
        own = frame.time - sum(child.time for child in frame.children)
        if frame.function == "epoll.poll":
            idle += frame.time
        elif in_callback and own > 0:
            name = _owner(frame)
            buckets[name] = buckets.get(name, 0.0) + own
        for child in frame.children:
            walk(child, in_callback)

    walk(root, False)
    busy = sum(buckets.values()) or 1.0
    lines = [f"  in event-loop callbacks {busy:.2f} s, idle in epoll {idle:.2f} s; of the callbacks' time:"]
    for name, seconds in sorted(buckets.items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"    {seconds / busy * 100:5.1f}%  {name}")
    return lines


def _owner(frame: Any) -> str:
    """Who a frame's own time belongs to: a library, Habla, the stdlib module, or a syscall."""
    path: str = frame.file_path or ""
    if frame.is_synthetic and frame.parent is not None:  # "[self]": the parent's own time
        return _owner(frame.parent)
    if path == "<built-in>":
        if frame.function.startswith("socket."):
            return "socket calls (kernel: send/recv)"
        parent = frame.parent
        return _owner(parent) if parent is not None else "built-in"
    if "/site-packages/" in path:
        return "library " + path.split("/site-packages/", 1)[1].split("/", 1)[0]
    if "/services/" in path:
        return "Habla " + path.split("/services/", 1)[1].split("/", 1)[0]
    if "/libs/" in path:
        return "Habla libs/" + path.split("/libs/", 1)[1].split("/", 1)[0]
    if "/lib/python3" in path:
        return "stdlib " + path.split("/lib/python3", 1)[1].split("/", 2)[1].removesuffix(".py")
    return path or "?"
