"""What the frontend keeps in memory or folds into one Redis round trip still behaves:
site copies follow every announcement (and only while subscribed), a status key that
expires unannounced reads offline, the folded limits and line writes keep their rules."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import db
from libs.common.settings import Settings
from libs.common.state.presence import site_status_channel, site_status_key
from services.rpc_frontend import sitecache
from services.rpc_frontend.context import Frontend
from services.rpc_frontend.unconfirmed import Unconfirmed
from tests.rpc_frontend.conftest import Api, Captured, RunningFrontend, StartFrontend, set_online


async def _until(condition: Callable[[], bool | Awaitable[bool]], wait_s: float = 20) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        result = condition()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _following(frontend: Frontend) -> bool:
    return frontend.sitecache.live


@pytest.fixture
def long_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies that would outlive the test: what changes them is the announcement only."""
    monkeypatch.setattr(sitecache, "STATE_MAX_AGE_S", 3600.0)
    monkeypatch.setattr(sitecache, "CONFIG_MAX_AGE_S", 3600.0)


async def test_a_state_copy_follows_announcements_not_silent_writes(
    long_copies: None, fe: RunningFrontend, api: Api, redis_client: aioredis.Redis, settings: Settings
) -> None:
    await _until(lambda: _following(fe.frontend))
    assert await api.ok("GET", "/status") == {"online": False, "operators_available": 0}
    # Written without an announcement: the copy is what answers (no Redis read).
    online = json.dumps({"online": True, "operators_available": 1})
    await redis_client.set(site_status_key(settings, api.site_id), online, ex=90)
    assert await api.ok("GET", "/status") == {"online": False, "operators_available": 0}
    # Announced (what the gateway's presence does): every request from then on sees it.
    await set_online(redis_client, settings, api.site_id, True)
    await _until(lambda: _status_is(api, True))
    assert (await api.session())["status"]["online"] is True
    await set_online(redis_client, settings, api.site_id, False)
    await _until(lambda: _status_is(api, False))


async def _status_is(api: Api, online: bool) -> bool:
    return bool((await api.ok("GET", "/status"))["online"] is online)


async def test_a_status_key_that_expires_unannounced_reads_offline(
    long_copies: None, fe: RunningFrontend, api: Api, redis_client: aioredis.Redis, settings: Settings
) -> None:
    """The gateway died: its presence key expires and nobody announces it."""
    await _until(lambda: _following(fe.frontend))
    online = json.dumps({"online": True, "operators_available": 1})
    await redis_client.set(site_status_key(settings, api.site_id), online, px=1500)
    # Announce, so no copy from before the write is kept.
    announcement = json.dumps({"site_id": api.site_id, **json.loads(online)})
    await redis_client.publish(site_status_channel(settings), announcement)
    await _until(lambda: _status_is(api, True))
    await _until(lambda: _status_is(api, False))


async def test_a_config_copy_is_dropped_when_the_site_is_invalidated(
    long_copies: None, fe: RunningFrontend, make_site: Callable[..., Awaitable[str]], engine: sa.Engine
) -> None:
    await _until(lambda: _following(fe.frontend))
    site = await make_site(["shop.example"])
    api = Api(fe.url, site)
    allowed = await api.call("GET", "/status", headers={"Origin": "https://shop.example"})
    assert allowed.code == 200
    refused = await api.call("GET", "/status", headers={"Origin": "https://other.example"})
    assert refused.code == 403

    def allow_other() -> None:  # what the console does: write MySQL, then invalidate
        with engine.begin() as conn:
            conn.execute(sa.update(db.sites).where(db.sites.c.id == site).values(allowed_domains=["other.example"]))

    await asyncio.to_thread(allow_other)
    await fe.frontend.sites.invalidate(site)

    async def other_allowed() -> bool:
        return (await api.call("GET", "/status", headers={"Origin": "https://other.example"})).code == 200

    await _until(other_allowed)
    assert (await api.call("GET", "/status", headers={"Origin": "https://shop.example"})).code == 403


async def test_nothing_is_kept_without_a_subscription(
    start_frontend: StartFrontend, api: Api, redis_client: aioredis.Redis, settings: Settings
) -> None:
    """Until the follower's subscription is confirmed (and after it is lost) every read
    goes to Redis: a change announced meanwhile would be missed."""
    fe = await start_frontend("nofollow")
    for follower in fe.followers:
        follower.cancel()
    await asyncio.gather(*fe.followers, return_exceptions=True)
    assert not fe.frontend.sitecache.live
    quiet = Api(fe.url, api.site_id)
    assert (await quiet.ok("GET", "/status"))["online"] is False
    online = json.dumps({"online": True, "operators_available": 1})
    await redis_client.set(site_status_key(settings, api.site_id), online, ex=90)  # unannounced
    assert (await quiet.ok("GET", "/status"))["online"] is True
    await redis_client.delete(site_status_key(settings, api.site_id))


async def test_page_views_count_against_the_returning_visitors_limit(
    start_frontend: StartFrontend, site_id: str
) -> None:
    fe = await start_frontend("pv", visitor_pageviews_per_min=3)
    api = Api(fe.url, site_id)
    token = (await api.session())["token"]  # a new visitor: held by the per-IP limit only
    for _ in range(3):
        await api.session(token)
    refused = await api.call("POST", "/session", {"token": token, "page": {"url": "http://127.0.0.1/x"}})
    assert refused.code == 429 and int(refused.headers["Retry-After"]) >= 1
    # Without a page (a widget re-reading its session) nothing is counted.
    again = await api.call("POST", "/session", {"token": token})
    assert again.code == 200


async def test_a_token_of_another_site_starts_a_new_visitor_here(
    api: Api, make_site: Callable[..., Awaitable[str]], fe: RunningFrontend
) -> None:
    first = await api.session()
    other = Api(fe.url, await make_site(["127.0.0.1", "localhost"]))
    here = await other.session(first["token"])
    assert here["visitor_id"] != first["visitor_id"]
    again = await api.session(first["token"])
    assert again["visitor_id"] == first["visitor_id"]


async def test_the_unknown_site_limit_refuses_before_any_lookup(start_frontend: StartFrontend, site_id: str) -> None:
    fe = await start_frontend("unknown", ip_unknown_sites_per_min=2)
    await fe.frontend.redis.delete(fe.settings.redis_key("rl", "ip-unknown-site", "127.0.0.1"))
    codes = [(await Api(fe.url, f"7{n:03d}-00000-00-0000").call("GET", "/status")).code for n in range(3)]
    assert codes == [404, 404, 429]
    refused = await Api(fe.url, site_id).call("GET", "/status")  # a real site too, from that IP
    assert refused.code == 429 and "unknown site ids" in json.loads(refused.body)["error"]
    await fe.frontend.redis.delete(fe.settings.redis_key("rl", "ip-unknown-site", "127.0.0.1"))


def test_the_send_script_builds_the_same_unconfirmed_member() -> None:
    """lines.py splices the conversation id in front of ``tail()``; the sweep and the
    unmarking remove exactly ``member()``."""
    for page_url in ("", 'https://shop.example/ünïcode?q="x"&y=</script>'):
        line = Unconfirmed(uuid.uuid4().hex, "m-1234567", "1234-5-6-7", "v1", page_url)
        spliced = '{"conversation_id": "' + line.conversation_id + '"' + line.tail()
        assert spliced == line.member()


async def test_a_line_after_redis_lost_the_counter_takes_the_logs_own_floor_path(
    fe: RunningFrontend, api: Api, captured: Captured, redis_client: aioredis.Redis, settings: Settings
) -> None:
    """The send script appends only where a running Redis vouches for the counter; a log
    another Redis process numbered (a restart from a snapshot) goes through the floor."""
    visitor = await api.session()
    first = await api.ok("POST", "/messages", {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "a"})
    conversation = first["conversation_id"]
    await redis_client.hset(settings.redis_key("conv", conversation, "meta"), "run", "another-redis-process")
    line = {"token": visitor["token"], "message_id": uuid.uuid4().hex, "body": "after the restart"}
    second = await api.ok("POST", "/messages", line)
    assert second["conversation_id"] == conversation and second["seq"] > first["seq"]
    message = await captured.next("ChatMessage", message_id=line["message_id"])
    assert (message.body, message.seq) == ("after the restart", second["seq"])
    assert await fe.frontend.chat.unconfirmed.sweep(grace_s=0) == 0  # marked and unmarked
    retry = await api.ok("POST", "/messages", line)  # the same id again: nothing appended
    assert (retry["seq"], retry["duplicate"]) == (second["seq"], True)
