"""The Redis state layer against the real Redis (a key prefix of this run's own)."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from libs.common.settings import Settings
from libs.common.state.conversations import ConversationLog
from libs.common.state.presence import OperatorPresence, SiteStatusReader, site_status_channel
from libs.common.state.sessions import VisitorSessions
from tests.redis_server import one_more_subscriber

SITE = "4324-24618-10-8812"


async def test_fifty_concurrent_appenders_get_gap_free_sequence_numbers(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    conversation = uuid.uuid4().hex
    logs = [ConversationLog(redis_client, settings) for _ in range(5)]

    async def appender(n: int) -> list[int]:
        log = logs[n % len(logs)]
        seqs = []
        for i in range(20):
            seqs.append((await log.append(conversation, f"m-{n}-{i}", {"body": f"{n}/{i}"})).seq)
        return seqs

    results = await asyncio.gather(*(appender(n) for n in range(50)))
    every = sorted(seq for seqs in results for seq in seqs)
    assert every == list(range(1, 50 * 20 + 1))
    for seqs in results:
        assert seqs == sorted(seqs)  # each appender's own messages stay in its order
    entries = await logs[0].after(conversation, 0, limit=2000)
    assert [e["seq"] for e in entries] == every


async def test_retried_append_returns_the_first_seq_and_appends_nothing(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    log = ConversationLog(redis_client, settings)
    conversation = uuid.uuid4().hex
    first = await log.append(conversation, "same-id", {"body": "hi"})
    await log.append(conversation, "other", {"body": "there"})
    again = await log.append(conversation, "same-id", {"body": "hi"})
    assert (first.seq, first.created) == (1, True)
    assert (again.seq, again.created) == (1, False)
    assert await log.last_seq(conversation) == 2
    assert [e["body"] for e in await log.after(conversation, 1)] == ["there"]
    assert await log.seq_of(conversation, "other") == 2


async def test_session_token_is_bound_to_its_visitor(redis_client: aioredis.Redis, settings: Settings) -> None:
    sessions = VisitorSessions(redis_client, settings)
    visitor = sessions.new_visitor_id()
    token = sessions.token_for(visitor)
    assert sessions.visitor_of(token) == visitor
    assert sessions.visitor_of(token[:-1] + ("0" if token[-1] != "0" else "1")) is None
    assert sessions.visitor_of("someone-else." + token.rpartition(".")[2]) is None
    assert sessions.visitor_of("garbage") is None

    await sessions.save(visitor, SITE, {"page_url": "https://example.com/a"})
    session = await sessions.get(visitor)
    assert session is not None and session["page_url"] == "https://example.com/a"
    assert 0 < await redis_client.ttl(settings.redis_key("visitor", visitor)) <= settings.session_ttl_s
    assert visitor in await sessions.on_site(SITE)
    await sessions.forget(visitor)
    assert await sessions.get(visitor) is None and visitor not in await sessions.on_site(SITE)


async def test_site_goes_online_with_an_operator_and_offline_when_presence_expires(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    import dataclasses

    short = dataclasses.replace(settings, presence_ttl_s=1)
    site = f"1111-{uuid.uuid4().int % 90000 + 10000}-11-1111"
    presence = OperatorPresence(redis_client, short)
    reader = SiteStatusReader(redis_client, short)
    changes: asyncio.Queue[tuple[str, bool, int]] = asyncio.Queue()

    async def listen() -> None:
        async for change in reader.changes():
            if change.site_id == site:
                await changes.put((change.site_id, change.online, change.operators_available))

    async with one_more_subscriber(redis_client, site_status_channel(short)):  # before the first change
        listener = asyncio.create_task(listen())
    try:
        assert not (await reader.get(site)).online
        await presence.set_available([site], "ana@localhost", "laptop", True)
        await presence.set_available([site], "ana@localhost", "phone", True)
        await presence.set_available([site], "bo@localhost", "desk", True)
        assert (await reader.get(site)).operators_available == 2
        await presence.set_available([site], "bo@localhost", "desk", False)
        assert await presence.available_operators(site) == ["ana@localhost"]

        # No heartbeat: the gateway "died". After the TTL the recompute any reader or
        # sweeper runs finds nobody, and even without one the status key is gone.
        await asyncio.sleep(1.2)
        assert not (await reader.get(site)).online
        assert await presence.recompute(site) == 0
        seen = [await asyncio.wait_for(changes.get(), 30) for _ in range(4)]
        assert seen == [(site, True, 1), (site, True, 2), (site, True, 1), (site, False, 0)]
    finally:
        listener.cancel()


def test_theme_validation_refuses_wrong_shapes_without_crashing() -> None:
    from libs.common import theme

    merged, errors = theme.validate({"colours": "red", "texts": ["x"]})
    assert merged == theme.default_theme()
    assert set(errors) == {"colours", "texts"}
    merged, errors = theme.validate({"colours": {"header_background": "#AA0000", "nope": "#000000"}})
    assert merged["colours"]["header_background"] == "#aa0000" and errors == {"nope": "unknown colour 'nope'"}
