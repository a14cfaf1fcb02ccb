"""The site directory against real Redis and MariaDB."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common.db import site_store
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory, UnknownSite
from tests.redis_server import one_more_subscriber


async def test_site_config_is_cached_and_invalidated(
    redis_client: aioredis.Redis, engine: sa.Engine, settings: Settings
) -> None:
    with engine.begin() as conn:
        account = site_store.account_for_email(conn, "dir@example.test")
        site = site_store.create_site(conn, account, "Directory test", allowed_domains=["shop.test"])
        site_store.add_operator(conn, site.id, "ana@localhost", "Ana")
    directory = SiteDirectory(redis_client, engine, settings)
    config = await directory.get(site.id)
    assert (config.name, config.allowed_domains, config.operators) == (
        "Directory test",
        ["shop.test"],
        [("ana@localhost", "Ana")],
    )

    changes: asyncio.Queue[str] = asyncio.Queue()

    async def listen() -> None:
        async for site_id in directory.changes():
            await changes.put(site_id)

    async with one_more_subscriber(redis_client, directory.channel):
        listener = asyncio.create_task(listen())
    try:
        with engine.begin() as conn:
            site_store.add_operator(conn, site.id, "bo@localhost", "Bo")
        assert len((await directory.get(site.id)).operators) == 1  # still the cached copy
        await directory.invalidate(site.id)
        assert await asyncio.wait_for(changes.get(), 30) == site.id
        assert len((await directory.get(site.id)).operators) == 2
    finally:
        listener.cancel()


async def test_unknown_and_malformed_site_ids_say_what_is_wrong(
    redis_client: aioredis.Redis, engine: sa.Engine, settings: Settings
) -> None:
    directory = SiteDirectory(redis_client, engine, settings)
    with pytest.raises(UnknownSite, match="is not a site id"):
        await directory.get("<script>")
    for _ in range(2):  # the second answer comes from the remembered miss
        with pytest.raises(UnknownSite, match="no site 9999-99999-99-9999"):
            await directory.get("9999-99999-99-9999")
