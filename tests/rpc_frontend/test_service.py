"""`python -m services.rpc_frontend` as a process: it serves, consumes its own delivery
queue, and stops cleanly on SIGTERM, closing WebSockets with 1012 (restart). Run with
HABLA_FRONTEND_PROCESSES=2, so the same test covers a process per core: both processes
answer on the one port, each as its own instance, and SIGTERM to the supervisor stops
them both the same clean way (one process is what every other service test starts)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import tornado.httpclient
import tornado.websocket

from libs.common.settings import Settings
from tools.prosody import free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_service_runs_and_stops_gracefully(
    settings: Settings, site_id: str, redis_client: aioredis.Redis
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HABLA_AMQP_URL": settings.amqp_url,
        "HABLA_REDIS_PREFIX": settings.redis_prefix,
        "HABLA_MYSQL_URL": settings.mysql_url,
        "HABLA_FRONTEND_PORT": str(port),
        "HABLA_FRONTEND_ID": f"{settings.frontend_id}-proc",
        "HABLA_FRONTEND_PROCESSES": "2",
        "HABLA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "HABLA_SECRET_KEY": settings.secret_key,
        "HABLA_DEMO_SITE_ID": site_id,
        # The run's earlier tests asked from 127.0.0.1 too, in this Redis prefix: the
        # default 600 a minute was used up when they ran fast (429 here).
        "HABLA_IP_REQUESTS_PER_MIN": "1000000",
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.rpc_frontend", cwd=ROOT, env=env)
    client = tornado.httpclient.AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # three processes to start on a busy machine
            try:
                health = await client.fetch(f"{base}/healthz")
                break
            except (ConnectionError, tornado.httpclient.HTTPClientError):
                await asyncio.sleep(0.1)
        assert json.loads(health.body)["status"] == "ok"
        demo = await client.fetch(f"{base}/demo")  # HABLA_DEMO_SITE_ID picks the site
        assert site_id.encode() in demo.body
        # New connections each (Tornado's simple client keeps none): the kernel hands them
        # to either process; both answer within a few, each under its own instance id.
        served_by: set[str] = set()
        for _ in range(200):
            if len(served_by) == 2:
                break
            answer = await client.fetch(f"{base}/api/sites/{site_id}/session", method="POST", body="{}")
            session = json.loads(answer.body)
            visitor_key = settings.redis_key("visitor", session["visitor_id"])
            served_by.add(str(await redis_client.hget(visitor_key, "frontend_id")))
        assert served_by == {f"{settings.frontend_id}-proc-0", f"{settings.frontend_id}-proc-1"}
        ws = await tornado.websocket.websocket_connect(
            f"ws://127.0.0.1:{port}/api/sites/{site_id}/ws?token={session['token']}"
        )
        assert json.loads(await ws.read_message() or "{}")["type"] == "status"
        process.send_signal(signal.SIGTERM)
        while await asyncio.wait_for(ws.read_message(), 10) is not None:
            pass
        assert ws.close_code == 1012
        ws.close()
        assert await asyncio.wait_for(process.wait(), 40) == 0
        with pytest.raises(ConnectionError):  # neither process listens any more
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
