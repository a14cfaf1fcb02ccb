"""Operators: add and remove with validation, who is available now (from the
gateway's presence in Redis), and the site-directory signal the gateway acts on."""

from __future__ import annotations

import asyncio
import dataclasses
import html

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common import partitions
from libs.common.db import site_store
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory
from libs.common.state.presence import OperatorPresence
from tests.console.conftest import Client, RunningConsole, field_error, running_console, text
from tests.redis_server import one_more_subscriber


async def test_add_operators_see_who_is_available_and_remove_one(
    client: Client, engine: sa.Engine, console_server: RunningConsole
) -> None:
    site_id = await client.sign_up()
    directory = SiteDirectory(console_server.console.redis, engine, console_server.settings)
    changes: asyncio.Queue[str] = asyncio.Queue()

    async def listen() -> None:
        async for changed in directory.changes():
            await changes.put(changed)

    async with one_more_subscriber(console_server.console.redis, directory.channel):
        listener = asyncio.create_task(listen())
    try:
        response = await client.post(
            f"/account/sites/{site_id}/operators", {"jid": " Alice@Example.org ", "display_name": "Alice"}
        )
        assert response.code == 302
        assert await asyncio.wait_for(changes.get(), 30) == site_id
        assert (await client.post(f"/account/sites/{site_id}/operators", {"jid": "bob@example.org"})).code == 302
        assert await asyncio.wait_for(changes.get(), 30) == site_id
        assert (await directory.get(site_id)).operators == [("alice@example.org", "Alice"), ("bob@example.org", "bob")]

        # The gateway records Alice as available: the page says so.
        presence = OperatorPresence(console_server.console.redis, console_server.settings)
        await presence.set_available([site_id], "alice@example.org", "laptop", True)
        page = text(await client.get(f"/account/sites/{site_id}/operators"))
        assert 'id="available-count">1<' in page
        rows = {
            jid: row
            for jid, row in (
                (j, page.split(f"<code>{j}</code>")[1][:200]) for j in ("alice@example.org", "bob@example.org")
            )
        }
        assert "available" in rows["alice@example.org"] and "away" in rows["bob@example.org"]

        # Removing Bob: gone from MySQL and (after the signal) from the site directory.
        response = await client.post(f"/account/sites/{site_id}/operators/remove", {"jid": "bob@example.org"})
        assert response.code == 302 and "removed=bob@example.org" in response.headers["Location"]
        assert await asyncio.wait_for(changes.get(), 30) == site_id
        assert (await directory.get(site_id)).operators == [("alice@example.org", "Alice")]
    finally:
        listener.cancel()
    with engine.connect() as conn:
        assert site_store.site_operators(conn, site_id) == [("alice@example.org", "Alice")]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"jid": ""}, "jid", "Enter the operator's XMPP address, e.g. alice@example.org."),
        (
            {"jid": "alice"},
            "jid",
            "'alice' is not a bare XMPP address: expected name@server, e.g. alice@example.org.",
        ),
        (
            {"jid": "alice@example.org/phone"},
            "jid",
            "'alice@example.org/phone' is not a bare XMPP address: expected name@server, e.g. alice@example.org.",
        ),
        ({"jid": "<b>@x.org"}, "jid", "'<b>@x.org' has characters not allowed in an operator's address."),
        (
            {"jid": "ok@example.org", "display_name": "d" * 101},
            "display_name",
            "A display name has at most 100 characters.",
        ),
    ],
)
async def test_operator_validation_errors_are_shown_next_to_the_field(
    client: Client, engine: sa.Engine, fields: dict[str, str], field: str, message: str
) -> None:
    site_id = await client.sign_up()
    response = await client.post(f"/account/sites/{site_id}/operators", fields)
    assert response.code == 400
    assert html.unescape(field_error(response, field)) == message
    assert "<b>@x.org" not in text(response)
    with engine.connect() as conn:
        assert site_store.site_operators(conn, site_id) == []


async def test_adding_an_operator_twice_says_so(client: Client) -> None:
    site_id = await client.sign_up()
    await client.post(f"/account/sites/{site_id}/operators", {"jid": "ana@example.org"})
    response = await client.post(f"/account/sites/{site_id}/operators", {"jid": "ANA@example.org"})
    assert response.code == 400
    assert field_error(response, "jid") == "ana@example.org is already an operator of this site."


async def test_removing_someone_who_is_not_an_operator_is_not_found(client: Client) -> None:
    site_id = await client.sign_up()
    for jid in ("nobody@example.org", "not a jid"):
        response = await client.post(f"/account/sites/{site_id}/operators/remove", {"jid": jid})
        assert response.code == 404


async def test_the_operators_page_names_the_bot_on_the_sites_partition_domain(
    settings: Settings, engine: sa.Engine, redis_client: aioredis.Redis
) -> None:
    """With HABLA_GATEWAY_PARTITIONS=4 a site's bot lives on its partition's domain."""
    four = dataclasses.replace(settings, gateway_partitions=4)
    async with running_console(four, engine, redis_client) as console:
        client = Client(console.url)
        site_id = await client.sign_up()
        page = text(await client.get(f"/account/sites/{site_id}/operators?added=alice%40example.org"))
        domain = partitions.site_domain(four, site_id, None)
        assert domain == f"p{partitions.partition_of(site_id, 4)}.{settings.default_component_domain}"
        assert f"<code>{site_id}@{domain}</code>" in page
