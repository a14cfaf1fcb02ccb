"""Fixtures for the transcript worker: a site, a capturing SMTP server (aiosmtpd on a
free port, in the test's event loop), a worker running in-process, and a helper that
chats the way the frontend and gateway do (log in Redis, then publish)."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP, Envelope, Session

from libs.common import codec, topology
from libs.common.db import site_store, sites
from libs.common.messaging import Bus
from libs.common.settings import Settings
from libs.common.sitedir import SiteConfig, SiteDirectory
from libs.common.state.conversations import ConversationLog, chat_line
from libs.common.state.sessions import VisitorSessions
from services.transcript_worker.app import Worker
from tools import prosody

OPERATOR_JID = "alice@example.org"
OPERATOR_NAME = "Alice"


class CapturingSMTP:
    """aiosmtpd handler that keeps every accepted mail; can refuse on demand."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.rcpt: list[list[str]] = []
        self.refusals: list[str] = []  # SMTP replies to give the next DATA commands, in order
        self.refuse_always: str | None = None
        self.attempts = 0
        self.on_accept: Callable[[EmailMessage], None] | None = None
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.attempts += 1
        if self.refuse_always:
            return self.refuse_always
        if self.refusals:
            return self.refusals.pop(0)
        message = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(message)
        self.rcpt.append(list(envelope.rcpt_tos))
        self.arrived.set()
        if self.on_accept is not None:
            self.on_accept(message)
        return "250 OK"

    def with_id(self, message_id: str) -> list[EmailMessage]:
        return [m for m in self.mails if m["Message-ID"] == message_id]

    async def wait_for(self, predicate: Callable[[], bool], wait_s: float = 20) -> None:
        deadline = time.monotonic() + wait_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"mail condition not met within {wait_s} s; got {len(self.mails)} mails")
            await asyncio.sleep(0.05)


@dataclasses.dataclass
class SmtpServer:
    handler: CapturingSMTP
    port: int
    server: asyncio.AbstractServer


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    handler = CapturingSMTP()
    port = prosody.free_port()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, hostname="test-smtp"), "127.0.0.1", port
    )
    yield SmtpServer(handler, port, server)
    server.close()
    await server.wait_closed()


@pytest.fixture
def worker_settings(settings: Settings, smtp: SmtpServer) -> Settings:
    return dataclasses.replace(
        settings,
        smtp_port=smtp.port,
        worker_metrics_port=prosody.free_port(),
        archive_batch_ms=50,
        transcript_wait_s=5,
        smtp_timeout_s=5.0,
    )


@pytest.fixture
async def site(engine: sa.Engine, redis_client: aioredis.Redis, settings: Settings) -> SiteConfig:
    """A fresh site with two transcript addresses, a custom colour and one operator."""
    with engine.begin() as conn:
        account = site_store.account_for_email(conn, f"owner-{uuid.uuid4().hex[:6]}@shop.example")
        created = site_store.create_site(
            conn, account, "Shoe <shop>", transcript_emails=["owner@shop.example", "team@shop.example"]
        )
        conn.execute(
            sa.update(sites).where(sites.c.id == created.id).values(theme={"colours": {"header_background": "#123456"}})
        )
        site_store.add_operator(conn, created.id, OPERATOR_JID, OPERATOR_NAME)
    directory = SiteDirectory(redis_client, engine, settings)
    await directory.invalidate(created.id)
    return await directory.get(created.id)


@asynccontextmanager
async def running_worker(
    settings: Settings, redis_client: aioredis.Redis, engine: sa.Engine, name: str = "worker"
) -> AsyncIterator[Worker]:
    bus = await Bus.connect(settings, f"test-{name}")
    worker = Worker.build(settings, bus, redis_client, engine)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


def part(mail: EmailMessage, kind: str) -> str:
    """The text of a mail's plain or html part."""
    body = mail.get_body((kind,))
    assert body is not None, f"no {kind} part"
    return str(body.get_content())


def now_ms() -> int:
    return int(time.time() * 1000)


class Chat:
    """One visitor's conversation, sent the way rpc_frontend and im_gateway send it."""

    def __init__(self, bus: Bus, redis: aioredis.Redis, settings: Settings, site_id: str, frontend_id: str) -> None:
        self.bus = bus
        self.settings = settings
        self.site_id = site_id
        self.visitor_id = uuid.uuid4().hex[:16]
        self.conversation_id = uuid.uuid4().hex
        self.log = ConversationLog(redis, settings)
        self.sessions = VisitorSessions(redis, settings)
        self.frontend_id = frontend_id
        self.sent: list[Any] = []

    async def page(self, url: str, title: str = "", referrer: str = "") -> None:
        await self.sessions.save(
            self.visitor_id,
            self.site_id,
            {"frontend_id": self.frontend_id, "page_url": url, "conversation_id": self.conversation_id},
        )
        view = codec.PageView(
            visitor_id=self.visitor_id,
            site_id=self.site_id,
            url=url,
            title=title or None,
            referrer=referrer or None,
            viewed_at_ms=now_ms(),
            conversation_id=self.conversation_id,
            user_agent="pytest",
        )
        await self.bus.publish(topology.VISITOR, f"{self.site_id}.pageview", view, message_id=uuid.uuid4().hex)

    async def visitor_says(self, body: str) -> Any:
        return await self._line(codec.SenderKind.VISITOR, body, topology.VISITOR, None)

    async def operator_says(self, body: str, replaces: str | None = None) -> Any:
        """An operator's line; ``replaces``: it corrects that message id (XEP-0308)."""
        return await self._line(codec.SenderKind.OPERATOR, body, topology.OPERATOR, OPERATOR_JID, replaces)

    async def _line(self, sender: int, body: str, exchange: str, jid: str | None, replaces: str | None = None) -> Any:
        message_id = uuid.uuid4().hex
        who = "visitor" if sender == codec.SenderKind.VISITOR else "operator"
        entry = chat_line(who, body, now_ms(), None, replaces=replaces)
        appended = await self.log.append(self.conversation_id, message_id, entry)
        message = codec.ChatMessage(
            message_id=message_id,
            conversation_id=self.conversation_id,
            site_id=self.site_id,
            visitor_id=self.visitor_id,
            sender=sender,
            operator_jid=jid,
            body=body,
            sent_at_ms=now_ms(),
            seq=appended.seq,
            operator_name=OPERATOR_NAME if jid else None,
            replaces_message_id=replaces,
        )
        await self.bus.publish(exchange, f"{self.site_id}.message", message)
        self.sent.append(message)
        return message

    async def note(self, body: str) -> Any:
        message = codec.ChatMessage(
            message_id=uuid.uuid4().hex,
            conversation_id=self.conversation_id,
            site_id=self.site_id,
            visitor_id=self.visitor_id,
            sender=codec.SenderKind.OPERATOR,
            operator_jid=OPERATOR_JID,
            body=body,
            sent_at_ms=now_ms(),
            seq=0,
            internal=True,
        )
        await self.bus.publish(topology.OPERATOR, f"{self.site_id}.message", message)
        self.sent.append(message)
        return message

    async def identify(self, name: str, email_address: str, phone: str = "") -> None:
        event = codec.VisitorEvent(
            visitor_id=self.visitor_id,
            site_id=self.site_id,
            kind=codec.VisitorEventKind.IDENTIFIED,
            at_ms=now_ms(),
            conversation_id=self.conversation_id,
            name=name,
            email=email_address,
            phone=phone or None,
        )
        await self.bus.publish(topology.VISITOR, f"{self.site_id}.event", event, message_id=uuid.uuid4().hex)

    async def operator_action(self, action: str, value: str | None = None) -> None:
        act = codec.OperatorAction(
            action_id=uuid.uuid4().hex,
            conversation_id=self.conversation_id,
            site_id=self.site_id,
            visitor_id=self.visitor_id,
            operator_jid=OPERATOR_JID,
            action=action,
            value=value,
            at_ms=now_ms(),
        )
        await self.bus.publish(topology.OPERATOR, f"{self.site_id}.action", act)

    async def visitor_ends(self) -> None:
        event = codec.VisitorEvent(
            visitor_id=self.visitor_id,
            site_id=self.site_id,
            kind=codec.VisitorEventKind.ENDED_CHAT,
            at_ms=now_ms(),
            conversation_id=self.conversation_id,
        )
        await self.bus.publish(topology.VISITOR, f"{self.site_id}.event", event, message_id=uuid.uuid4().hex)


async def eventually(check: Callable[[], Awaitable[bool]], wait_s: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + wait_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {wait_s} s")
        await asyncio.sleep(0.05)
