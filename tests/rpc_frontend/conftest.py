"""Fixtures for rpc_frontend: in-process frontends on free ports against the real
servers, sites in MySQL, a capture queue on habla.visitor, and a real Chromium."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
import tornado.httpclient
import tornado.httpserver

from libs.common import codec, db, topology
from libs.common.db import site_store
from libs.common.messaging import Bus, Envelope
from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import OperatorPresence
from libs.common.state.shared import SharedConnection
from libs.common.tasks import cancel_and_wait
from libs.common.topology import QueueSpec
from services.rpc_frontend.app import make_app
from services.rpc_frontend.context import Frontend
from services.rpc_frontend.delivery import DeliveryConsumer
from services.rpc_frontend.follow import follow_sites
from tools.prosody import free_port

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class RunningFrontend:
    url: str
    frontend: Frontend
    server: tornado.httpserver.HTTPServer
    bus: Bus
    followers: list[asyncio.Task[None]]

    @property
    def settings(self) -> Settings:
        return self.frontend.settings

    async def stop(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()
        # As main(): a follower whose cancellation was lost must not hang the test.
        await cancel_and_wait(self.followers)
        await self.bus.close()


StartFrontend = Callable[..., Awaitable[RunningFrontend]]


@pytest.fixture
async def start_frontend(
    settings: Settings, engine: sa.Engine, redis_client: SharedConnection
) -> AsyncIterator[StartFrontend]:
    """Start frontends as main() does (own bus, delivery consumer, site follower)."""
    started: list[RunningFrontend] = []

    async def start(name: str = "a", **overrides: Any) -> RunningFrontend:
        """``redis=`` a client of its own (default the tests' shared one); other keywords
        override settings."""
        port = free_port()
        redis: SharedConnection = overrides.pop("redis", redis_client)
        instance = dataclasses.replace(
            settings,
            frontend_id=f"{settings.frontend_id}-{name}-{uuid.uuid4().hex[:4]}",
            frontend_port=port,
            public_url=f"http://127.0.0.1:{port}",
            ip_requests_per_min=overrides.pop("ip_requests_per_min", 100_000),
            # Every test asks from 127.0.0.1 and some for unknown sites on purpose.
            ip_unknown_sites_per_min=overrides.pop("ip_unknown_sites_per_min", 100_000),
            **overrides,
        )
        bus = await Bus.connect(instance, "rpc_frontend")
        await bus.declare_topology()
        frontend = Frontend(instance, redis, bus, engine)
        await bus.consume(
            topology.frontend_delivery_queue(instance.frontend_id), DeliveryConsumer(frontend.hub).consume
        )
        followers = [asyncio.create_task(follow_sites(frontend))]
        server = make_app(frontend).listen(port, address="127.0.0.1")
        running = RunningFrontend(f"http://127.0.0.1:{port}", frontend, server, bus, followers)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def fe(start_frontend: StartFrontend) -> RunningFrontend:
    return await start_frontend()


MakeSite = Callable[..., Awaitable[str]]


@pytest.fixture
def make_site(engine: sa.Engine) -> MakeSite:
    async def make(allowed_domains: list[str] | None = None, theme: dict[str, Any] | None = None) -> str:
        def create() -> str:
            with engine.begin() as conn:
                account = site_store.account_for_email(conn, "owner@shop.example")
                site = site_store.create_site(conn, account, "Shoe shop", allowed_domains=allowed_domains or [])
                if theme is not None:
                    conn.execute(sa.update(db.sites).where(db.sites.c.id == site.id).values(theme=theme))
                return site.id

        return await asyncio.to_thread(create)

    return make


@pytest.fixture
async def site_id(make_site: MakeSite) -> str:
    return await make_site(["127.0.0.1", "localhost"])


class Captured:
    """Everything published on habla.visitor for one site, as decoded structs."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Envelope] = asyncio.Queue()

    async def handler(self, envelope: Envelope) -> None:
        await self.queue.put(envelope)

    async def next(self, type_name: str, wait_s: float = 10, **match: Any) -> Any:
        """The next struct of that type whose fields equal ``match`` (others are skipped)."""
        deadline = time.monotonic() + wait_s
        while True:
            envelope = await asyncio.wait_for(self.queue.get(), max(deadline - time.monotonic(), 0.01))
            struct = envelope.struct
            if envelope.type_name == type_name and all(getattr(struct, k) == v for k, v in match.items()):
                return struct

    def drain(self) -> list[Envelope]:
        found = []
        while not self.queue.empty():
            found.append(self.queue.get_nowait())
        return found


@pytest.fixture
async def captured(make_bus: Callable[[str], Awaitable[Bus]], site_id: str) -> Captured:
    bus = await make_bus("capture")
    capture = Captured()
    spec = QueueSpec(
        f"test.capture.{uuid.uuid4().hex[:8]}", ((topology.VISITOR, f"{site_id}.#"),), durable=False, retry=False
    )
    await bus.consume(spec, capture.handler)
    return capture


class Api:
    """A tiny JSON client for the widget API (what the widget's fetch calls do)."""

    def __init__(self, base: str, site_id: str) -> None:
        self.base, self.site_id = base, site_id
        self.client = tornado.httpclient.AsyncHTTPClient()

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> tornado.httpclient.HTTPResponse:
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        return await self.client.fetch(
            f"{self.base}/api/sites/{self.site_id}{path}",
            method=method,
            body=payload,
            headers=headers,
            raise_error=False,
            request_timeout=40,
        )

    async def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = await self.call(method, path, body)
        assert response.code == 200, (response.code, response.body)
        data: dict[str, Any] = json.loads(response.body)
        return data

    async def session(self, token: str = "", url: str = "http://127.0.0.1/shoes") -> dict[str, Any]:
        return await self.ok("POST", "/session", {"token": token, "page": {"url": url, "title": "Shoes"}})


@pytest.fixture
def api(fe: RunningFrontend, site_id: str) -> Api:
    return Api(fe.url, site_id)


async def operator_reply(
    bus: Bus,
    settings: Settings,
    redis_client: aioredis.Redis,
    site_id: str,
    visitor_id: str,
    conversation_id: str,
    body: str,
    frontend_id: str,
    name: str = "Alice",
) -> int:
    """What the gateway does for an operator's line (CONTRACTS.md): log, then deliver."""
    message_id = uuid.uuid4().hex
    sent_at = int(time.time() * 1000)
    entry = {"kind": "message", "sender": "operator", "body": body, "sent_at_ms": sent_at, "operator_name": name}
    appended = await ConversationLog(redis_client, settings).append(conversation_id, message_id, entry)
    message = codec.ChatMessage(
        message_id=message_id,
        conversation_id=conversation_id,
        site_id=site_id,
        visitor_id=visitor_id,
        sender=codec.SenderKind.OPERATOR,
        operator_jid="alice@localhost",
        body=body,
        sent_at_ms=sent_at,
        seq=appended.seq,
        operator_name=name,
    )
    delivery = codec.VisitorDelivery(
        visitor_id=visitor_id, site_id=site_id, conversation_id=conversation_id, message=message
    )
    await bus.publish(topology.DELIVER, frontend_id, delivery, mandatory=False)
    return appended.seq


async def operator_action(
    bus: Bus, site_id: str, visitor_id: str, conversation_id: str, action: str, frontend_id: str, value: str = ""
) -> None:
    act = codec.OperatorAction(
        action_id=uuid.uuid4().hex,
        conversation_id=conversation_id,
        site_id=site_id,
        visitor_id=visitor_id,
        operator_jid="alice@localhost",
        action=action,
        value=value or None,
        at_ms=int(time.time() * 1000),
    )
    delivery = codec.VisitorDelivery(
        visitor_id=visitor_id, site_id=site_id, conversation_id=conversation_id, action=act
    )
    await bus.publish(topology.DELIVER, frontend_id, delivery, mandatory=False)


async def set_online(redis_client: aioredis.Redis, settings: Settings, site_id: str, online: bool) -> None:
    await OperatorPresence(redis_client, settings).set_available([site_id], "alice@localhost", "laptop", online)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()
