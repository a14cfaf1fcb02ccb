"""pyinstrument profiles of one rpc_frontend process: under widget boots, and under
visitors' chat lines.

A second frontend of the same stack (same vhost, Redis prefix and database; its own
port and delivery queue) runs under `python -m pyinstrument`; the boots phase's wrk
load, or visitors on its WebSockets sending lines back to back, run against it for
the given seconds, then SIGINT stops it and pyinstrument writes the session. Printed:
where the time inside event-loop callbacks goes, by owner (Habla's modules, each
library, socket calls), and the call tree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.bench_status import free_port
from bench.e2e_chat import Visitor, new_visitors
from bench.e2e_http import BOOT_BODY, load, wait_post
from libs.common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TREE_LINES = 60
# Kept after the run (overwritten by the next) for other views of them, e.g.
# .venv/bin/python -m pyinstrument --load=/tmp/habla-bench-e2e-boots.pyisession -r html
SESSIONS = Path(tempfile.gettempdir())


@asynccontextmanager
async def profiled_frontend(settings: Settings, session: Path) -> AsyncIterator[str]:
    """A second rpc_frontend of the stack under pyinstrument; yields its base URL."""
    port = free_port()
    own = dataclasses.replace(
        settings,
        frontend_port=port,
        frontend_id=f"{settings.frontend_id}-profiled-{session.stem}",
        public_url=f"http://127.0.0.1:{port}",
    )
    command = [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(session)]
    process = await asyncio.to_thread(
        subprocess.Popen, [*command, "-m", "services.rpc_frontend"], cwd=ROOT, env=own.to_env()
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.to_thread(process.wait, 30)


def render(session: Path, title: str) -> list[str]:
    command = [sys.executable, "-m", "pyinstrument", f"--load={session}", "-r", "text", "--no-color"]
    tree = subprocess.run(
        [*command, "-p", "processor_options.filter_threshold=0.02"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    start = next((i for i, line in enumerate(tree) if "main  services/rpc_frontend/__main__.py" in line), 0)
    end = next((i for i, line in enumerate(tree) if line.startswith("To view this report")), len(tree))
    return [
        f"pyinstrument: rpc_frontend under {title}; wall-clock samples, session kept in {session}",
        *where_time_goes(session),
        "  call tree of the requests (frames >= 2% of samples; libraries folded):",
        *[line for line in tree[start : min(end, start + TREE_LINES)] if line.strip()],
    ]


async def widget_boots(settings: Settings, site_id: str, connections: int, seconds: float) -> list[str]:
    session = SESSIONS / "habla-bench-e2e-boots.pyisession"
    async with profiled_frontend(settings, session) as base:
        url = f"{base}/api/sites/{site_id}/session"
        await asyncio.to_thread(wait_post, url)
        result = await load(url, [BOOT_BODY], connections, seconds)
    return render(session, f"widget boots ({result.rate:.0f}/s while profiled, {seconds:g} s, {connections} at once)")


async def visitor_lines(settings: Settings, site_id: str, visitors_n: int, seconds: float) -> list[str]:
    """Visitors on the profiled frontend's WebSockets sending lines back to back (each
    waits for "sent"), for ``seconds``: the frontend's share of a chat line."""
    session = SESSIONS / "habla-bench-e2e-lines.pyisession"
    async with profiled_frontend(settings, session) as base:
        api = f"{base}/api/sites/{site_id}"
        await asyncio.to_thread(wait_post, f"{api}/session")
        visitors = await new_visitors(api, visitors_n)
        for v in visitors:
            await v.connect(api.replace("http", "ws", 1) + "/ws")
        sent = 0
        stop_at = asyncio.get_running_loop().time() + seconds

        async def send(v: Visitor) -> None:
            nonlocal sent
            while asyncio.get_running_loop().time() < stop_at:
                await v.say(f"profiled line {sent}")
                sent += 1

        try:
            await asyncio.gather(*(send(v) for v in visitors))
        finally:
            for v in visitors:
                v.close()
    title = f"visitor lines ({sent / seconds:.0f}/s accepted while profiled, {visitors_n} visitors)"
    return render(session, title)


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
