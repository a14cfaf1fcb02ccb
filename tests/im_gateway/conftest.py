"""Fixtures for the gateway: an in-process gateway on the run's XMPP server, sites with
operator accounts, real operator clients, visitors published on habla.visitor.

``xmpp_server`` is the run's Prosody; a test marked ``both_servers`` (one whose outcome
depends on the server: rosters and privileges, presence and probes, disco, what closes
the stream, the ping barrier, forged senders) runs against an ejabberd started for the
run (tools/ejabberd.py) as well. The rest is the gateway's own logic, the same whatever
server carries the stanzas: running it twice doubled its time and proved nothing more."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import codec, topology
from libs.common.db import site_store
from libs.common.messaging import Bus, Envelope
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import SiteStatusReader
from libs.common.state.sessions import VisitorSessions
from libs.common.topology import QueueSpec
from services.im_gateway.gateway import Gateway
from tests.im_gateway.operator_client import DEADLINE_S, OperatorClient
from tools import ejabberd, prosody

_counter = itertools.count(1)


@dataclass(frozen=True)
class XmppServer:
    """The XMPP server a test's gateway and operators use."""

    kind: str  # "prosody" | "ejabberd"
    config: prosody.ProsodyConfig | ejabberd.EjabberdConfig

    def register(self, user: str, password: str) -> None:
        if isinstance(self.config, prosody.ProsodyConfig):
            prosody.register(self.config, user, password)
        else:
            ejabberd.register(self.config, user, password)


SERVERS = ("prosody", "ejabberd")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "xmpp_server" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("both_servers") is not None
        metafunc.parametrize("xmpp_server", SERVERS if both else SERVERS[:1], indirect=True, scope="session")


@pytest.fixture(scope="session")
def xmpp_server(request: pytest.FixtureRequest, settings: Settings, artifacts: Any) -> Iterator[XmppServer]:
    if request.param == "prosody":
        yield XmppServer("prosody", request.getfixturevalue("prosody_server"))
        return
    if not ejabberd.available():
        pytest.skip("ejabberd is not installed (scripts/setup.sh installs Debian's)")
    folder = Path(tempfile.mkdtemp(prefix="habla-ejabberd-"))
    cfg = ejabberd.EjabberdConfig(
        dir=folder,
        domain=settings.xmpp_domain,
        component_domain=settings.xmpp_component_domain,
        component_secret=settings.xmpp_component_secret,
        c2s_port=ejabberd.free_port(),
        component_port=ejabberd.free_port(),
        http_port=ejabberd.free_port(),
    )
    process = ejabberd.start(cfg)
    try:
        yield XmppServer("ejabberd", cfg)
    finally:
        ejabberd.stop(process, cfg)
        shutil.copytree(folder / "logs", Path(artifacts) / f"ejabberd-{folder.name}", dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def gateway_settings(settings: Settings, xmpp_server: XmppServer) -> Settings:
    """Short intervals so tests see presence, expiry and force-away quickly; same code paths."""
    return dataclasses.replace(
        settings,
        xmpp_c2s_port=xmpp_server.config.c2s_port,
        xmpp_component_port=xmpp_server.config.component_port,
        presence_heartbeat_s=1,
        presence_ttl_s=3,
        gateway_presence_interval_ms=300,
        gateway_presence_ceiling_per_s=5,
        gateway_answer_timeout_s=4,
        # A small cap, so tests reach it with a handful of visitors.
        gateway_roster_cap=5,
        gateway_lease_ttl_s=3,
        frontend_id=f"gwtest-{uuid.uuid4().hex[:6]}",
    )


@pytest.fixture(scope="session")
async def gateway(
    gateway_settings: Settings, redis_client: aioredis.Redis, engine: sa.Engine
) -> AsyncIterator[Gateway]:
    bus = await Bus.connect(gateway_settings, "im_gateway-test")
    gw = Gateway(gateway_settings, bus, redis_client, engine)
    await gw.start()
    await asyncio.wait_for(gw.component.ready.wait(), 10)
    yield gw
    await gw.stop()
    await bus.close()


@dataclass
class Visitor:
    visitor_id: str
    site_id: str
    conversation_id: str
    jid: str = ""


@dataclass
class Deliveries:
    """What the gateway published to the test frontend's delivery queue."""

    items: list[Any] = field(default_factory=list)

    async def handler(self, envelope: Envelope) -> None:
        self.items.append(envelope.struct)

    async def wait_for(self, predicate: Callable[[Any], bool], within: float = DEADLINE_S) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for item in self.items:
                if predicate(item):
                    return item
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no delivery matched; got {self.items[-5:]}")


@dataclass
class Site:
    """One test's site with its own operators, a visitor publisher and delivery capture."""

    site_id: str
    settings: Settings
    bus: Bus
    redis: aioredis.Redis
    gateway: Gateway
    operators: list[OperatorClient]
    deliveries: Deliveries
    frontend_id: str
    published: Deliveries  # everything the gateway published on habla.operator for this site
    joined: list[str] = field(default_factory=list)  # per operator: "privilege" or "prompt" (bot_in_roster)

    @property
    def bot(self) -> str:
        return f"{self.site_id}@{self.settings.xmpp_component_domain}"

    async def visitor(self, *, page_url: str = "https://shop.example/", title: str = "Shoes", **extra: Any) -> Visitor:
        sessions = VisitorSessions(self.redis, self.settings)
        visitor_id = sessions.new_visitor_id()
        await sessions.save(
            visitor_id,
            self.site_id,
            {
                "frontend_id": self.frontend_id,
                "page_url": page_url,
                "page_title": title,
                "referrer": "https://search.example/?q=shoes",
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                "pages": 1,
                **extra,
            },
        )
        await self.page_view(visitor_id, page_url, title)
        jid = await self.gateway.desk.names.jid_of(visitor_id)
        return Visitor(visitor_id, self.site_id, "", jid)

    async def page_view(self, visitor_id: str, url: str, title: str = "", conversation_id: str = "") -> None:
        view = codec.PageView(
            visitor_id=visitor_id,
            site_id=self.site_id,
            url=url,
            title=title,
            viewed_at_ms=int(time.time() * 1000),
            conversation_id=conversation_id or None,
        )
        await self.bus.publish(topology.VISITOR, f"{self.site_id}.pageview", view, message_id=uuid.uuid4().hex)

    async def say(self, visitor: Visitor, body: str, message_id: str | None = None) -> str:
        """What the frontend does for a visitor line: conversation, log, publish."""
        sessions = VisitorSessions(self.redis, self.settings)
        if not visitor.conversation_id:
            visitor.conversation_id = uuid.uuid4().hex
            await sessions.save(visitor.visitor_id, self.site_id, {"conversation_id": visitor.conversation_id})
        message_id = message_id or uuid.uuid4().hex
        sent_at = int(time.time() * 1000)
        appended = await ConversationLog(self.redis, self.settings).append(
            visitor.conversation_id,
            message_id,
            {"kind": "message", "sender": "visitor", "body": body, "sent_at_ms": sent_at, "operator_name": None},
        )
        message = codec.ChatMessage(
            message_id=message_id,
            conversation_id=visitor.conversation_id,
            site_id=self.site_id,
            visitor_id=visitor.visitor_id,
            sender=codec.SenderKind.VISITOR,
            body=body,
            sent_at_ms=sent_at,
            seq=appended.seq,
            page_url="https://shop.example/",
        )
        await self.bus.publish(topology.VISITOR, f"{self.site_id}.message", message)
        return message_id

    async def event(self, visitor: Visitor, kind: int, **fields: Any) -> None:
        event = codec.VisitorEvent(
            visitor_id=visitor.visitor_id,
            site_id=self.site_id,
            kind=kind,
            at_ms=int(time.time() * 1000),
            conversation_id=visitor.conversation_id or None,
            **fields,
        )
        await self.bus.publish(topology.VISITOR, f"{self.site_id}.event", event, message_id=uuid.uuid4().hex)

    async def contact(self, visitor: Visitor, operator: int = 0) -> str:
        """Wait until the visitor is the operator's contact (see ``contact``)."""
        return await contact(self.operators[operator], visitor.jid, gateway=self.gateway)

    @property
    def roster_managed(self) -> bool:
        """Whether the gateway writes this run's operators' rosters (XEP-0356 works)."""
        return all(how == "privilege" for how in self.joined)

    async def online(self) -> bool:
        return (await SiteStatusReader(self.redis, self.settings).get(self.site_id)).online

    async def wait_online(self, expected: bool = True, within: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await self.online() == expected:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"site {self.site_id} did not become {'online' if expected else 'offline'}")


async def connect_operator(
    server: XmppServer | prosody.ProsodyConfig, settings: Settings, user: str, show: str | None = None
) -> OperatorClient:
    password = uuid.uuid4().hex[:12]
    if isinstance(server, prosody.ProsodyConfig):
        server = XmppServer("prosody", server)
    await asyncio.to_thread(server.register, user, password)
    client = OperatorClient(f"{user}@{settings.xmpp_domain}", password, "127.0.0.1", settings.xmpp_c2s_port)
    return await client.start(show)


async def contact(client: OperatorClient, jid: str, within: float = DEADLINE_S, gateway: Gateway | None = None) -> str:
    """Wait until ``jid`` (a site bot or visitor) is the operator's contact; returns how.

    "privilege": the gateway wrote the roster (XEP-0356), no prompt. "prompt": the
    server grants no working roster access (ejabberd 23.01), so the contact asked, and
    the person behind the client accepted — what a human operator does there.
    """
    bot = jid
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if client.subscribed_to(bot):
            return "privilege"
        asked = [r for r in client.received if r.kind == "presence" and r.ptype == "subscribe" and r.sender == bot]
        if asked:
            client.approve(bot)
            await client.wait_roster(lambda: client.subscribed_to(bot), within=deadline - time.monotonic())
            return "prompt"
        await asyncio.sleep(0.05)
    state = ""
    if gateway is not None:  # what the gateway thought, for the failure message
        rosters = gateway.rosters
        state = (
            f"; gateway: writes {gateway.privileges.can_write(client.jid)}, holds "
            f"{rosters.held.get(client.jid)}, pending {rosters.pushes.pending(client.jid)}, "
            f"in flight {rosters.pushes.in_flight(client.jid)}, synced {rosters.synced}; "
            f"send queue {gateway.component.waiting_queue.qsize()}, ready {gateway.component.ready.is_set()}, "
            f"sender {getattr(gateway.component, '_run_out_filters', None)}"
        )
    raise TimeoutError(f"{bot} never reached {client.jid}'s roster (nor asked to){state}")


async def gone_from_roster(client: OperatorClient, jid: str, within: float = DEADLINE_S) -> None:
    await client.wait_roster(lambda: client.roster_item(jid) is None, within=within)


async def create_site(engine: sa.Engine, operators: list[tuple[str, str]]) -> str:
    def create() -> str:
        with engine.begin() as conn:
            account = site_store.account_for_email(conn, f"owner{next(_counter)}-{uuid.uuid4().hex[:6]}@shop.example")
            site = site_store.create_site(conn, account, "Test shop", transcript_emails=["owner@shop.example"])
            for jid, name in operators:
                site_store.add_operator(conn, site.id, jid, name)
            return site.id

    return await asyncio.to_thread(create)


@pytest.fixture
async def make_site(
    gateway: Gateway,
    gateway_settings: Settings,
    xmpp_server: XmppServer,
    redis_client: aioredis.Redis,
    engine: sa.Engine,
) -> AsyncIterator[Callable[..., Awaitable[Site]]]:
    """A site with ``n`` connected operators whose presence the gateway has seen."""
    opened: list[OperatorClient] = []
    buses: list[Bus] = []

    async def make(n: int = 1, *, wait_online: bool = True, shows: list[str | None] | None = None) -> Site:
        tag = uuid.uuid4().hex[:6]
        clients = []
        for i in range(n):
            show = shows[i] if shows else None
            clients.append(await connect_operator(xmpp_server, gateway_settings, f"op{i}-{tag}", show))
        opened.extend(clients)
        site_id = await create_site(engine, [(c.jid, f"Agent {i}") for i, c in enumerate(clients)])
        bus = await Bus.connect(gateway_settings, "gw-test-site")
        buses.append(bus)
        frontend_id = f"fe-{tag}"
        deliveries = Deliveries()
        await bus.consume(topology.frontend_delivery_queue(frontend_id), deliveries.handler)
        published = Deliveries()
        await bus.consume(
            QueueSpec(
                f"gw-test-operator-{tag}",
                ((topology.OPERATOR, f"{site_id}.*"),),
                durable=False,
                expires_ms=60_000,
                retry=False,
            ),
            published.handler,
        )
        site = Site(site_id, gateway_settings, bus, redis_client, gateway, clients, deliveries, frontend_id, published)
        # Only now does the gateway hear of the site: nothing it publishes is missed.
        await SiteDirectory(redis_client, engine, gateway_settings).invalidate(site_id)
        site.joined = [await contact(client, site.bot, gateway=gateway) for client in clients]
        if wait_online:
            await site.wait_online()
        return site

    yield make
    for client in opened:
        await client.stop()
    for bus in buses:
        await bus.close()
