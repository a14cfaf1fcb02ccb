"""Frontends behind a real HAProxy (tools/haproxy.py): no stickiness, /healthz checks,
draining on stop.

Two `python -m services.rpc_frontend` processes behind HAProxy; a visitor sends lines
over HTTP and reads them over a WebSocket and over long-poll, everything through
HAProxy, while both frontends are restarted one after the other (SIGTERM: /healthz
answers 503 for HABLA_DRAIN_S, then the listener closes). Every request must be
answered 200 and every line read exactly once, in order, by both readers.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket

from libs.common.settings import Settings
from tests.rpc_frontend.conftest import Api
from tools import haproxy
from tools.prosody import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="scripts/setup.sh installs haproxy"),
]


def _health(port: int) -> int | None:
    """/healthz's status, None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def _healthy(port: int) -> bool:
    return _health(port) == 200


@dataclass
class Frontends:
    settings: Settings
    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, i: int) -> None:
        env = self.settings.to_env()
        env.update(
            HABLA_FRONTEND_PORT=str(self.ports[i]),
            HABLA_FRONTEND_ID=f"lb-{i}-{uuid.uuid4().hex[:6]}",
            HABLA_DRAIN_S="2",
            HABLA_TRUSTED_PROXIES="127.0.0.1",
            # The test measures loss, not the limits (which count per visitor and IP).
            HABLA_VISITOR_MESSAGES_PER_MIN="100000",
            HABLA_IP_REQUESTS_PER_MIN="100000",
        )
        self.processes[i] = subprocess.Popen([sys.executable, "-m", "services.rpc_frontend"], cwd=ROOT, env=env)
        deadline = time.monotonic() + 60
        while not _healthy(self.ports[i]):
            assert self.processes[i].poll() is None, f"frontend {i} exited"
            assert time.monotonic() < deadline, f"frontend {i} not healthy"
            time.sleep(0.1)

    def stop(self, i: int) -> int:
        """SIGTERM; the frontend must first say it is draining on /healthz, then exit."""
        process = self.processes.pop(i)
        process.terminate()
        deadline = time.monotonic() + 10
        while _health(self.ports[i]) != 503:
            assert time.monotonic() < deadline, f"frontend {i} never said it was draining"
            time.sleep(0.05)
        return process.wait(timeout=30)


@pytest.fixture
def frontends(settings: Settings) -> Iterator[Frontends]:
    fleet = Frontends(settings, [free_port(), free_port()])
    try:
        for i in range(len(fleet.ports)):
            fleet.start(i)
        yield fleet
    finally:
        for i in list(fleet.processes):
            fleet.stop(i)


@pytest.fixture
def balancer(frontends: Frontends, tmp_path: Path) -> Iterator[str]:
    pool = haproxy.Pool("frontends", free_port(), frontends.ports)
    process = haproxy.start(haproxy.Balancer(tmp_path / "haproxy", [pool]))
    try:
        deadline = time.monotonic() + 30
        while not _healthy(pool.port):
            assert time.monotonic() < deadline, "HAProxy has no healthy frontend"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{pool.port}"
    finally:
        haproxy.stop(process)


@dataclass
class Reader:
    """Collects the seq of every visitor line it reads, resuming after the last one."""

    seqs: list[int] = field(default_factory=list)
    conversation_id: str = ""
    reconnects: int = 0

    def take(self, event: dict[str, Any]) -> None:
        if event.get("type") != "entries":
            return
        self.conversation_id = str(event["conversation_id"])
        for entry in event["entries"]:
            if entry.get("kind") == "message" and entry.get("sender") == "visitor":
                self.seqs.append(int(entry["seq"]))

    @property
    def after(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    def query(self, token: str) -> str:
        return f"token={token}&conversation_id={self.conversation_id}&after={self.after}"


async def _read_websocket(base: str, site_id: str, token: str, reader: Reader, done: asyncio.Event) -> None:
    while not done.is_set():
        url = f"{base.replace('http', 'ws')}/api/sites/{site_id}/ws?{reader.query(token)}"
        try:
            socket = await tornado.websocket.websocket_connect(url)
        except (OSError, tornado.httpclient.HTTPClientError, tornado.websocket.WebSocketError):
            await asyncio.sleep(0.2)  # e.g. 503 from HAProxy while no frontend is up
            reader.reconnects += 1
            continue
        try:
            while (raw := await socket.read_message()) is not None:
                reader.take(json.loads(raw))
        finally:
            socket.close()
        reader.reconnects += 1


async def _read_polls(api: Api, token: str, reader: Reader, done: asyncio.Event) -> None:
    while not done.is_set():
        response = await api.call("GET", f"/poll?{reader.query(token)}")
        if response.code != 200:
            reader.reconnects += 1
            await asyncio.sleep(0.2)
            continue
        for event in json.loads(response.body)["events"]:
            reader.take(event)


async def test_rolling_restart_behind_haproxy_loses_and_repeats_nothing(
    frontends: Frontends, balancer: str, site_id: str
) -> None:
    api = Api(balancer, site_id)
    visitor = await api.session()
    token = visitor["token"]
    first = await api.ok("POST", "/messages", {"token": token, "message_id": uuid.uuid4().hex, "body": "hello"})
    sent = [first["seq"]]
    failures: list[object] = []
    done = asyncio.Event()
    ws, poll = Reader(), Reader()
    readers = [
        asyncio.create_task(_read_websocket(balancer, site_id, token, ws, done)),
        asyncio.create_task(_read_polls(api, token, poll, done)),
    ]

    async def send_until(stop: asyncio.Event) -> None:
        while not stop.is_set():
            line = {"token": token, "message_id": uuid.uuid4().hex, "body": f"line {len(sent)}"}
            response = await api.call("POST", "/messages", line)
            if response.code == 200:
                sent.append(json.loads(response.body)["seq"])
            else:
                failures.append((response.code, response.body))
            await asyncio.sleep(0.05)

    rolled = asyncio.Event()
    writer = asyncio.create_task(send_until(rolled))
    for i in range(len(frontends.ports)):
        await asyncio.sleep(1)
        assert await asyncio.to_thread(frontends.stop, i) == 0
        await asyncio.to_thread(frontends.start, i)
    await asyncio.sleep(1)
    rolled.set()
    await writer

    deadline = time.monotonic() + 60
    while ws.seqs[-1:] != sent[-1:] or poll.seqs[-1:] != sent[-1:]:
        assert time.monotonic() < deadline, (sent[-1], ws.seqs[-3:], poll.seqs[-3:])
        await asyncio.sleep(0.1)
    done.set()
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)

    assert failures == [], failures
    assert len(sent) > 20
    assert ws.seqs == sent and poll.seqs == sent  # each line once, in order, on both
    assert ws.reconnects >= 1  # the socket's frontend was restarted under it


async def test_a_stopping_frontend_finishes_what_it_started(frontends: Frontends, site_id: str) -> None:
    """SIGTERM under a burst of widget boots and a parked long-poll: every request the
    frontend took is answered 200 (none cut, none 5xx), the long-poll at once."""
    api = Api(f"http://127.0.0.1:{frontends.ports[0]}", site_id)
    visitor = await api.session()
    poll = asyncio.create_task(api.call("GET", f"/poll?token={visitor['token']}&after=0"))
    await asyncio.sleep(0.5)  # parked: nothing to say yet
    boots = [
        asyncio.create_task(api.call("POST", "/session", {"page": {"url": f"http://127.0.0.1/{i}"}})) for i in range(40)
    ]
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(asyncio.to_thread(frontends.stop, 0))
    answered = [r for r in await asyncio.gather(*boots) if r.code != 599]  # 599: never reached it
    assert answered and {r.code for r in answered} == {200}, {r.code for r in answered}
    # Answered by the stop (close_sockets), not cut: a poll left parked would still wait
    # for its 20-25 s when the process exits (drain 2 s + at most 2 x 5 s) and end 599.
    # The wait is a deadline, not a speed check.
    parked = await asyncio.wait_for(poll, 60)
    assert parked.code == 200
    assert await stopping == 0
