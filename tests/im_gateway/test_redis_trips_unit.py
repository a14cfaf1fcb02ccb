"""Against the test Redis, no XMPP: what a page view, a visitor's arrival and the site
refresh (bot summary, rosters) read and write, and in how many round trips.

Round trips are counted on the client's connections (a pipeline, a script, a command:
one write each). They are the gateway's cost per page view and per refresh, so a test
fails if one comes back per visitor or per operator; what is read and written is
checked alongside, against the one-command-at-a-time reads these replaced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from libs.common import codec
from libs.common.settings import Settings
from libs.common.state.sessions import VisitorSessions
from services.im_gateway import relay
from services.im_gateway.coalescer import PresenceCoalescer
from services.im_gateway.consumers.visitor import VisitorConsumer
from services.im_gateway.dedupe import Delivered
from services.im_gateway.desk import Desk
from services.im_gateway.follows import Follows
from services.im_gateway.operators import OperatorDirectory
from services.im_gateway.rosters import Rosters
from services.im_gateway.routing import Routing
from services.im_gateway.sitebot import SiteBot, summary_text
from services.im_gateway.visitors import NAME_ATTEMPTS, VisitorNames, VisitorPages


class CountingConnection(Connection):
    """Counts what the client writes to Redis: one per command, pipeline or script."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


@pytest.fixture
async def counted(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    pool = aioredis.ConnectionPool.from_url(
        settings.redis_url, decode_responses=True, connection_class=CountingConnection
    )
    client = aioredis.Redis.from_pool(pool)
    await client.ping()  # connected before counting
    yield client
    await client.aclose()


async def trips(work: Any) -> tuple[int, Any]:
    before = CountingConnection.sent
    result = await work
    return CountingConnection.sent - before, result


class Recorder:
    """The outbox: what would go out on the XMPP stream."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []

    def presence(self, sender: str, to: str, **kwargs: Any) -> None:
        self.sent.append(("presence", sender, to, str(kwargs)))

    def chat_state(self, sender: str, to: str, state: str) -> None:
        self.sent.append(("chat_state", sender, to, state))

    def chat(self, sender: str, to: str, body: str, **kwargs: Any) -> None:
        self.sent.append(("chat", sender, to, body))


def make_desk(redis: aioredis.Redis, settings: Settings, operators: dict[str, dict[str, str]]) -> Desk:
    directory = OperatorDirectory(cast(Any, None), cast(Any, None))
    directory._by_site.update(operators)
    outbox = Recorder()
    return Desk(
        settings=settings,
        outbox=cast(Any, outbox),
        sessions=VisitorSessions(redis, settings),
        log=cast(Any, None),
        names=VisitorNames(redis, settings),
        pages=VisitorPages(redis, settings),
        operators=directory,
        availability=cast(Any, None),
        routing=Routing(redis, settings),
        coalescer=PresenceCoalescer(cast(Any, outbox), 2.0, 10),
        events=cast(Any, None),
        delivered=cast(Any, None),
        follows=Follows(redis, settings),
    )


def pending(desk: Desk, operator: str) -> dict[str, Any]:
    queue = desk.coalescer._queues.get(operator)
    return dict(queue.pending) if queue else {}


def new_site() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


def op(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}@chat.localhost"


async def test_a_page_view_is_one_round_trip_and_reaches_followers_and_the_chat(
    counted: aioredis.Redis, settings: Settings
) -> None:
    site, alice, bob, carol = new_site(), op("alice"), op("bob"), op("carol")
    desk = make_desk(counted, settings, {site: {alice: "Alice", bob: "Bob", carol: "Carol"}})
    visitor, conversation = uuid.uuid4().hex[:16], uuid.uuid4().hex
    await desk.routing.assign(conversation, site, visitor, alice)
    await desk.follows.follow(bob, visitor, site)
    jid = await desk.names.jid_of(visitor)  # claimed before (a chatting visitor has a name)
    view = codec.PageView(
        visitor_id=visitor, site_id=site, conversation_id=conversation, url="https://shop.example/a", title="A"
    )
    n, _ = await trips(relay.page_view(desk, view))
    assert n == 1
    assert (await desk.pages.latest(visitor)).url == "https://shop.example/a"  # type: ignore[union-attr]
    assert pending(desk, alice)[jid].show == "chat" and pending(desk, alice)[jid].status == "A — https://shop.example/a"
    assert pending(desk, bob)[jid].show == "chat"  # a follower sees it too
    assert pending(desk, carol) == {}  # neither chatting nor following
    assert site in desk.dirty_sites

    # No conversation, no follower: still one round trip, nothing queued, no name claimed.
    other = uuid.uuid4().hex[:16]
    alone = codec.PageView(visitor_id=other, site_id=site, url="https://shop.example/b", title="")
    n, _ = await trips(relay.page_view(desk, alone))
    assert n == 1
    assert (await desk.pages.recent(other))[0].url == "https://shop.example/b"
    assert not await counted.exists(settings.redis_key("gw", "vname", other))
    assert pending(desk, alice).keys() == {jid}


async def test_an_arrival_costs_no_round_trip_and_claims_no_name(counted: aioredis.Redis, settings: Settings) -> None:
    site = new_site()
    desk = make_desk(counted, settings, {site: {op("alice"): "Alice"}})
    visitor = uuid.uuid4().hex[:16]
    event = codec.VisitorEvent(visitor_id=visitor, site_id=site, kind=codec.VisitorEventKind.ARRIVED)
    n, _ = await trips(relay.visitor_event(desk, event))
    assert n == 0
    assert site in desk.dirty_sites  # the bot's count and the rosters are refreshed
    assert not await counted.exists(settings.redis_key("gw", "vname", visitor))


async def test_names_are_claimed_in_one_round_trip_as_before(counted: aioredis.Redis, settings: Settings) -> None:
    names = VisitorNames(counted, settings)
    first, second, third = (uuid.uuid4().hex[:16] for _ in range(3))
    # Another visitor holds the first candidate of `second`: it gets the next one.
    await counted.set(settings.redis_key("gw", "vid", VisitorNames.candidate(second)), "someone-else")
    # `third` was named before (by another gateway): that name stays.
    await counted.set(settings.redis_key("gw", "vname", third), "kind-koala-7")
    n, found = await trips(names.names_of([first, second, third, first]))
    assert n == 1
    assert found == {
        first: VisitorNames.candidate(first),
        second: VisitorNames.candidate(second, 1),
        third: "kind-koala-7",
    }
    assert await counted.get(settings.redis_key("gw", "vid", found[second])) == second
    assert await counted.get(settings.redis_key("gw", "vname", second)) == found[second]
    # Cached now: no round trip, and a fresh instance reads the same names from Redis.
    n, again = await trips(names.jids_of([first, second]))
    assert n == 0 and again[second] == f"{found[second]}@{settings.xmpp_component_domain}"
    assert await VisitorNames(counted, settings).name_of(second) == found[second]
    assert await names.visitor_of(found[second]) == second
    # Every candidate another visitor's: refused, as before.
    crowded = uuid.uuid4().hex[:16]
    for attempt in range(NAME_ATTEMPTS):
        await counted.set(settings.redis_key("gw", "vid", VisitorNames.candidate(crowded, attempt)), "x")
    with pytest.raises(RuntimeError):
        await names.name_of(crowded)


async def seat(desk: Desk, site: str, visitor: str, *, seen: float | None = None, **fields: str) -> None:
    """A visitor on the site (last seen ``seen``, default now), as the frontend saves one."""
    await desk.sessions.save(visitor, site, fields)
    if seen is not None:
        await desk.sessions._redis.zadd(desk.sessions._site_key(site), {visitor: seen})


async def test_the_site_refresh_costs_the_same_round_trips_for_30_or_60_chats(
    counted: aioredis.Redis, settings: Settings
) -> None:
    found: dict[int, int] = {}
    for chats in (30, 60):  # more than the roster cap (20): each is looked up
        site, alice, bob = new_site(), op("alice"), op("bob")
        desk = make_desk(counted, settings, {site: {alice: "Alice", bob: "Bob"}})
        rosters = Rosters(desk, counted, cast(Any, None), cast(Any, None), cast(Any, None), cast(Any, None), None)  # type: ignore[arg-type]
        visitors = [uuid.uuid4().hex[:16] for _ in range(chats)]
        for i, visitor in enumerate(visitors):
            await seat(desk, site, visitor)
            await desk.routing.assign(uuid.uuid4().hex, site, visitor, alice if i % 2 else bob)
        n, wanted = await trips(rosters.wanted_visitors(site))
        found[chats] = n
        assert wanted[alice] | wanted[bob] == set(visitors)  # all chatting: all kept, past the cap
    assert found[30] == found[60] <= 5


async def test_the_site_refresh_wants_whom_it_wanted_before(counted: aioredis.Redis, settings: Settings) -> None:
    site, alice, bob = new_site(), op("alice"), op("bob")
    settings = dataclasses.replace(settings, gateway_roster_cap=3)
    desk = make_desk(counted, settings, {site: {alice: "Alice", bob: "Bob"}})
    rosters = Rosters(desk, counted, cast(Any, None), cast(Any, None), cast(Any, None), cast(Any, None), None)  # type: ignore[arg-type]
    now = time.time()
    chatting, gone_chatting, followed, gone_followed = (uuid.uuid4().hex[:16] for _ in range(4))
    idle = [uuid.uuid4().hex[:16] for _ in range(5)]
    old = now - settings.session_ttl_s - 60  # past the session TTL: the visit is over
    await seat(desk, site, chatting, seen=now - 200)
    await seat(desk, site, gone_chatting, seen=old)
    await seat(desk, site, followed, seen=now - 100)
    await seat(desk, site, gone_followed, seen=old)
    for i, visitor in enumerate(idle):
        await seat(desk, site, visitor, seen=now - i)  # idle[0] newest
    await desk.routing.assign(uuid.uuid4().hex, site, chatting, alice)
    await desk.routing.assign(uuid.uuid4().hex, site, gone_chatting, alice)
    await desk.follows.follow(bob, followed, site)
    await desk.follows.follow(bob, gone_followed, site)
    wanted = await rosters.wanted_visitors(site)
    # Kept for the chat or the follow while on a visit; then the newest, up to the cap.
    assert wanted[alice] == {chatting, idle[0], idle[1]}
    assert wanted[bob] == {followed, idle[0], idle[1]}
    # The bot's count: visitors on a visit now (ZCOUNT), as the list's length was.
    bot = SiteBot(desk)
    on_site = await desk.sessions.on_site(site)
    assert len(on_site) == 7 and await desk.sessions.count_on_site(site) == 7
    assert await bot.summary(site) == summary_text(7, 2)
    assert await desk.sessions.still_on_site(site, [chatting, gone_chatting, "nobody"]) == {chatting}
    assert await desk.sessions.still_on_site(site, []) == set()


class Grants:
    """Every operator's roster is ours to write (XEP-0356 granted)."""

    def can_write(self, operator: str) -> bool:
        return True


class NoSites:
    async def get(self, site_id: str) -> Any:
        raise KeyError(site_id)  # the group is then named after the site id


async def test_a_contact_waiting_to_be_added_is_not_looked_up_again(
    counted: aioredis.Redis, settings: Settings
) -> None:
    site, alice = new_site(), op("alice")
    desk = make_desk(counted, settings, {site: {alice: "Alice"}})
    rosters = Rosters(desk, counted, cast(Any, None), cast(Any, Grants()), cast(Any, NoSites()), cast(Any, None), None)  # type: ignore[arg-type]
    rosters._synced.set()
    ann, ben = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    await seat(desk, site, ann, name="Ann\nSmith")
    await seat(desk, site, ben)
    first, _ = await trips(rosters.refresh_site(site))
    queue = dict(rosters.pushes._queues[alice].pending)
    ann_jid, ben_jid = await desk.names.jid_of(ann), await desk.names.jid_of(ben)
    ann_item, ben_item = queue[ann_jid], queue[ben_jid]
    assert ann_item is not None and ben_item is not None
    assert ann_item.name == f"{ann_jid.split('@')[0]} (Ann Smith)"  # one line
    assert ben_item.name == ben_jid.split("@")[0] and ben_item.site_id == site
    assert queue[desk.bot_jid(site)] is not None  # the bot, always
    # Nothing written yet (the push ceiling): the next refresh keeps the queued items,
    # without claiming names or reading sessions again.
    second, _ = await trips(rosters.refresh_site(site))
    assert second == first - 2
    assert rosters.pushes._queues[alice].pending == queue
    # Ben leaves before he was ever added: his addition is dropped.
    await desk.sessions.left(site, ben)
    await rosters.refresh_site(site)
    assert ben_jid not in rosters.pushes._queues[alice].pending
    assert ann_jid in rosters.pushes._queues[alice].pending


async def test_a_new_roster_contact_is_shown_its_page_in_one_or_two_round_trips(
    counted: aioredis.Redis, settings: Settings
) -> None:
    site, alice = new_site(), op("alice")
    desk = make_desk(counted, settings, {site: {alice: "Alice"}})
    rosters = Rosters(desk, counted, cast(Any, None), cast(Any, Grants()), cast(Any, NoSites()), cast(Any, None), None)  # type: ignore[arg-type]
    reader, chatter = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    await seat(desk, site, reader, page_url="https://shop.example/from-session", page_title="Session")
    conversation = uuid.uuid4().hex
    await seat(desk, site, chatter, conversation_id=conversation)
    await desk.routing.assign(conversation, site, chatter, alice)
    await desk.pages.add(chatter, "https://shop.example/cart", "Cart")
    jids = await desk.names.jids_of([reader, chatter])
    n, _ = await trips(rosters.show(alice, jids[reader]))
    assert n == 1  # no conversation to read
    n, _ = await trips(rosters.show(alice, jids[chatter]))
    assert n == 2
    shown = pending(desk, alice)
    assert (shown[jids[reader]].show, shown[jids[reader]].status) == (
        None,
        "Session — https://shop.example/from-session",
    )
    assert (shown[jids[chatter]].show, shown[jids[chatter]].status) == ("chat", "Cart — https://shop.example/cart")
    assert (alice, chatter) in desk.shown


async def test_a_batchs_page_views_are_recorded_with_its_reads_unless_delivered(
    counted: aioredis.Redis, settings: Settings
) -> None:
    """The visitor consumer's prefetch: the delivered marks, the conversations and each
    page view's work (record the page, read followers and the chat) in one round trip;
    a page view already marked delivered records nothing and counts as seen."""
    site, alice, bob = new_site(), op("alice"), op("bob")
    desk = dataclasses.replace(
        make_desk(counted, settings, {site: {alice: "Alice", bob: "Bob"}}), delivered=Delivered(counted, settings)
    )
    visitor, conversation = uuid.uuid4().hex[:16], uuid.uuid4().hex
    await desk.routing.assign(conversation, site, visitor, alice)
    await desk.follows.follow(bob, visitor, site)
    jid = await desk.names.jid_of(visitor)

    def envelope(struct: Any) -> Any:
        return SimpleNamespace(type_name=type(struct).__name__, struct=struct, message_id=uuid.uuid4().hex)

    line = envelope(
        codec.ChatMessage(
            message_id="m", conversation_id=conversation, site_id=site, visitor_id=visitor, body="hi", sender=1
        )
    )
    fresh = envelope(
        codec.PageView(visitor_id=visitor, site_id=site, conversation_id=conversation, url="https://x/new", title="N")
    )
    again = envelope(codec.PageView(visitor_id=visitor, site_id=site, url="https://x/again", title=""))
    arrived = envelope(codec.VisitorEvent(visitor_id=visitor, site_id=site, kind=codec.VisitorEventKind.ARRIVED))
    for marked in (again, arrived):
        await counted.set(desk.delivered.key(marked.message_id), "1")
    consumer = VisitorConsumer(desk, cast(Any, SimpleNamespace(ready=asyncio.Event())))
    n, prefetched = await trips(consumer._prefetch([line, fresh, again, arrived]))
    assert n == 1 and prefetched is not None
    assert prefetched.seen == {line.message_id: False, again.message_id: True, arrived.message_id: True}
    assert prefetched.routes[conversation][0] is not None and prefetched.routes[conversation][0].operator == alice
    assert [p.url for p in await desk.pages.recent(visitor)] == ["https://x/new"]  # not the delivered one
    # The handler takes it from there without a round trip of its own.
    n, _ = await trips(relay.page_view(desk, fresh.struct, prefetched.early[fresh.message_id]))
    assert n == 0
    assert pending(desk, alice)[jid].show == "chat" and pending(desk, alice)[jid].status == "N — https://x/new"
    assert pending(desk, bob)[jid].status == "N — https://x/new"
