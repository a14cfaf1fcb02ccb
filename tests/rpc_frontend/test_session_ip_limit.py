"""POST /session counts the per-IP limits inside the visit's own round trip when the
site is known from memory: every request still counts once, the 429 still comes before
any other refusal, and an IP flooding unknown site ids is still refused here."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import redis.asyncio as aioredis

from libs.common.settings import Settings
from tests.rpc_frontend.conftest import Api, RunningFrontend, StartFrontend


def own_prefix(settings: Settings) -> str:
    """Counters of this test alone (every test asks from 127.0.0.1)."""
    return f"{settings.redis_prefix}{uuid.uuid4().hex[:8]}:"


async def following(fe: RunningFrontend, wait_s: float = 30) -> None:
    """Until the frontend's site follower is subscribed: only then are sites loaded by a
    request kept in memory (a deadline, not a speed check)."""
    deadline = time.monotonic() + wait_s
    while not fe.frontend.sitecache.live:
        assert time.monotonic() < deadline, "the site follower never subscribed"
        await asyncio.sleep(0.02)


async def ip_count(fe: RunningFrontend, redis_client: aioredis.Redis, bucket: str = "ip") -> int:
    return int(await redis_client.get(fe.settings.redis_key("rl", bucket, "127.0.0.1")) or 0)


async def site_in_memory(
    start_frontend: StartFrontend, site_id: str, settings: Settings, name: str, **limits: int
) -> tuple[RunningFrontend, Api]:
    """A frontend with ``limits`` on counters of this test alone, following sites, that
    holds ``site_id`` in memory after one session (whose load counted the IP once)."""
    fe = await start_frontend(name, redis_prefix=own_prefix(settings), **limits)
    await following(fe)
    api = Api(fe.url, site_id)
    await api.session()
    assert fe.frontend.sitecache.held_config(site_id) is not None
    return fe, api


async def test_each_session_request_counts_the_ip_once(
    start_frontend: StartFrontend, site_id: str, settings: Settings, redis_client: aioredis.Redis
) -> None:
    fe = await start_frontend("ipcount", ip_requests_per_min=4, redis_prefix=own_prefix(settings))
    await following(fe)
    api = Api(fe.url, site_id)
    first = await api.session()  # the site is not in memory yet: load_site counts the IP
    assert fe.frontend.sitecache.held_config(site_id) is not None  # from here: counted in the visit script
    await api.session(first["token"])
    await api.session()
    await api.session(first["token"])
    assert await ip_count(fe, redis_client) == 4
    refused = await api.call("POST", "/session", {"token": first["token"], "page": {"url": "http://127.0.0.1/x"}})
    assert refused.code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "too many requests" in json.loads(refused.body)["error"]
    assert await ip_count(fe, redis_client) == 5
    # A refused request wrote nothing: the visitor's page count is still 1 + 2 views.
    session = await redis_client.hgetall(fe.settings.redis_key("visitor", first["visitor_id"]))
    assert session["pages"] == "3"


async def test_answers_before_the_script_count_the_ip_first(
    start_frontend: StartFrontend, site_id: str, settings: Settings, redis_client: aioredis.Redis
) -> None:
    fe, api = await site_in_memory(start_frontend, site_id, settings, "iperrors", ip_requests_per_min=3)
    assert (await api.call("POST", "/session", raw=b"{not json")).code == 400
    foreign = await api.call("POST", "/session", {"page": {}}, headers={"Origin": "https://elsewhere.example"})
    assert foreign.code == 403
    assert await ip_count(fe, redis_client) == 3
    # Over the limit now: a 429 before the 400 or the 403 they would get.
    assert (await api.call("POST", "/session", raw=b"{not json")).code == 429
    refused = await api.call("POST", "/session", {"page": {}}, headers={"Origin": "https://elsewhere.example"})
    assert refused.code == 429
    assert refused.headers.get("Access-Control-Allow-Origin") == "https://elsewhere.example"  # readable by the page
    assert (await api.call("POST", "/session", {"page": {}})).code == 429
    assert await ip_count(fe, redis_client) == 6


async def test_an_ip_scanning_unknown_sites_is_refused_a_session(
    start_frontend: StartFrontend, site_id: str, settings: Settings, redis_client: aioredis.Redis
) -> None:
    fe, api = await site_in_memory(start_frontend, site_id, settings, "ipscan", ip_unknown_sites_per_min=2)
    codes = [(await Api(fe.url, f"7{n:03d}-00000-00-0000").call("GET", "/status")).code for n in range(2)]
    assert codes == [404, 404]
    refused = await api.call("POST", "/session", {"page": {"url": "http://127.0.0.1/x"}})
    assert refused.code == 429 and "unknown site ids" in json.loads(refused.body)["error"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert await ip_count(fe, redis_client) == 4  # that request counted too, as admit_ip's do
