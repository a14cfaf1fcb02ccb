"""`python -m services.rpc_frontend` as a process: it serves, consumes its own delivery
queue, and stops cleanly on SIGTERM, closing WebSockets with 1012 (restart)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import tornado.httpclient
import tornado.websocket

from libs.common.settings import Settings
from tools.prosody import free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_service_runs_and_stops_gracefully(settings: Settings, site_id: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HABLA_AMQP_URL": settings.amqp_url,
        "HABLA_REDIS_PREFIX": settings.redis_prefix,
        "HABLA_MYSQL_URL": settings.mysql_url,
        "HABLA_FRONTEND_PORT": str(port),
        "HABLA_FRONTEND_ID": f"{settings.frontend_id}-proc",
        "HABLA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "HABLA_SECRET_KEY": settings.secret_key,
        "HABLA_DEMO_SITE_ID": site_id,
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.rpc_frontend", cwd=ROOT, env=env)
    client = tornado.httpclient.AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                health = await client.fetch(f"{base}/healthz")
                break
            except (ConnectionError, tornado.httpclient.HTTPClientError):
                await asyncio.sleep(0.1)
        assert json.loads(health.body)["status"] == "ok"
        demo = await client.fetch(f"{base}/demo")  # HABLA_DEMO_SITE_ID picks the site
        assert site_id.encode() in demo.body
        session = json.loads((await client.fetch(f"{base}/api/sites/{site_id}/session", method="POST", body="{}")).body)
        ws = await tornado.websocket.websocket_connect(
            f"ws://127.0.0.1:{port}/api/sites/{site_id}/ws?token={session['token']}"
        )
        assert json.loads(await ws.read_message() or "{}")["type"] == "status"
        process.send_signal(signal.SIGTERM)
        while await asyncio.wait_for(ws.read_message(), 10) is not None:
            pass
        assert ws.close_code == 1012
        ws.close()
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
