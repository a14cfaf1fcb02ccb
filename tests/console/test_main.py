"""`python -m services.console` starts, answers /healthz with its dependencies, serves
the sign-up page, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import tornado.httpclient

from libs.common.settings import Settings
from tests.console.test_end_to_end import free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_console_process_serves_and_stops_on_sigterm(settings: Settings) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HABLA_CONSOLE_PORT": str(port),
        "HABLA_REDIS_URL": settings.redis_url,
        "HABLA_REDIS_PREFIX": settings.redis_prefix,
        "HABLA_MYSQL_URL": settings.mysql_url,
        "HABLA_SECRET_KEY": settings.secret_key,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.console", cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE
    )
    client = tornado.httpclient.AsyncHTTPClient()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = await client.fetch(f"http://127.0.0.1:{port}/healthz", raise_error=False)
                break
            except OSError:
                assert time.monotonic() < deadline and process.returncode is None, "console did not start"
                await asyncio.sleep(0.2)
        assert health.code == 200 and b'"redis": "ok"' in health.body and b'"mysql": "ok"' in health.body
        signup = await client.fetch(f"http://127.0.0.1:{port}/account/signup")
        assert b"Create account" in signup.body
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    assert "console listening" in log and "console stopping" in log
