"""A pyinstrument profile of one rpc_frontend process under widget boots.

A second frontend of the same stack (same vhost, Redis prefix and database; its own
port and delivery queue) runs under `python -m pyinstrument`; the same wrk load as the
boots phase runs against it for the given seconds, then SIGINT stops it and
pyinstrument writes the session. Printed: where the samples' own time goes (flat, by
function, library frames included) and the application's call tree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bench_status import free_port
from bench.e2e_http import BOOT_BODY, load, wait_post
from libs.common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FLAT_LINES = 30
TREE_LINES = 60


async def widget_boots(settings: Settings, site_id: str, connections: int, seconds: float) -> list[str]:
    port = free_port()
    own = dataclasses.replace(
        settings,
        frontend_port=port,
        frontend_id=f"{settings.frontend_id}-profiled",
        public_url=f"http://127.0.0.1:{port}",
    )
    folder = Path(tempfile.mkdtemp(prefix="habla-bench-profile-"))
    session = folder / "frontend.pyisession"
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

    flat = render("--show-all", "-p", "flat=true")
    tree = render("-p", "processor_options.filter_threshold=0.02")
    return [
        f"pyinstrument: rpc_frontend under widget boots ({result.rate:.0f}/s while profiled, {seconds:g} s, "
        f"{connections} at once); own time by function, all frames:",
        *flat[:FLAT_LINES],
        "application call tree (frames >= 2% of samples):",
        *tree[:TREE_LINES],
    ]
