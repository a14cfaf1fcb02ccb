"""Sites: create, rename, allowed domains, transcript emails, with every validation
error, and the site directory (what the widget and status image read) following."""

from __future__ import annotations

import asyncio
import html

import pytest
import sqlalchemy as sa

from libs.common.db import site_store
from libs.common.sitedir import SiteDirectory
from tests.console.conftest import Client, RunningConsole, field_error, text
from tests.redis_server import one_more_subscriber


async def test_create_a_second_site_and_list_both(client: Client, engine: sa.Engine) -> None:
    first = await client.sign_up(site_name="Shoe shop")
    response = await client.post("/account/sites", {"name": "Hat shop"})
    assert response.code == 302
    second = response.headers["Location"].split("/")[3].split("?")[0]
    assert second != first
    listing = text(await client.get("/account/sites"))
    assert "Shoe shop" in listing and "Hat shop" in listing and first in listing and second in listing
    with engine.connect() as conn:
        assert site_store.get_site(conn, second).name == "Hat shop"


async def test_create_site_needs_a_name(client: Client) -> None:
    await client.sign_up()
    response = await client.post("/account/sites", {"name": " "})
    assert response.code == 400
    assert field_error(response, "name") == "Give the site a name, e.g. Shoe shop."


async def test_settings_are_saved_and_the_site_directory_follows(
    client: Client, engine: sa.Engine, console_server: RunningConsole
) -> None:
    site_id = await client.sign_up()
    directory = SiteDirectory(console_server.console.redis, engine, console_server.settings)
    assert (await directory.get(site_id)).name == "Shoe shop"  # cached now
    changes: asyncio.Queue[str] = asyncio.Queue()

    async def listen() -> None:
        async for changed in directory.changes():
            await changes.put(changed)

    async with one_more_subscriber(console_server.console.redis, directory.channel):
        listener = asyncio.create_task(listen())
    try:
        response = await client.post(
            f"/account/sites/{site_id}",
            {
                "name": "Shoes & boots",
                "allowed_domains": "Shop.Example\nwww.shop.example, localhost:8000",
                "transcript_emails": "Owner@Shop.Example\nteam@shop.example",
            },
        )
        # No mail server here: the confirmation links are not sent ("&unsent=1" says so).
        assert response.code == 302 and response.headers["Location"].startswith(f"/account/sites/{site_id}?saved=1")
        assert await asyncio.wait_for(changes.get(), 30) == site_id
    finally:
        listener.cancel()
    config = await directory.get(site_id)
    assert config.name == "Shoes & boots"
    assert config.allowed_domains == ["shop.example", "www.shop.example", "localhost:8000"]
    assert config.transcript_emails == []  # new addresses wait for their links (test_transcript_confirmation)
    page = text(await client.get(f"/account/sites/{site_id}?saved=1"))
    assert "Saved." in page and "Shoes &amp; boots" in page


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"name": ""}, "name", "Give the site a name, e.g. Shoe shop."),
        ({"name": "n" * 201}, "name", "A site name has at most 200 characters."),
        (
            {"allowed_domains": "https://shop.example/"},
            "allowed_domains",
            "'https://shop.example/': enter only the host name, like shop.example (no http:// and no path).",
        ),
        (
            {"allowed_domains": "shop_example!"},
            "allowed_domains",
            "'shop_example!' is not a host name: use letters, digits, dots and hyphens, like shop.example.",
        ),
        ({"allowed_domains": "\n".join(f"h{n}.example" for n in range(21))}, "allowed_domains", "At most 20 domains."),
        (
            {"transcript_emails": "owner@shop.example\nnobody"},
            "transcript_emails",
            "'nobody': Enter an email address like you@example.com.",
        ),
        (
            {"transcript_emails": "\n".join(f"t{n}@shop.example" for n in range(11))},
            "transcript_emails",
            "At most 10 addresses.",
        ),
    ],
)
async def test_settings_validation_errors_are_shown_next_to_the_field_and_nothing_changes(
    client: Client, engine: sa.Engine, fields: dict[str, str], field: str, message: str
) -> None:
    site_id = await client.sign_up()
    data = {"name": "Renamed", "allowed_domains": "shop.example", "transcript_emails": "a@shop.example", **fields}
    response = await client.post(f"/account/sites/{site_id}", data)
    assert response.code == 400
    assert html.unescape(field_error(response, field)) == message
    # What the owner typed is shown again, so they can correct it.
    assert html.escape(data[field].splitlines()[0] if data[field] else "", quote=False) in text(response)
    with engine.connect() as conn:
        site = site_store.get_site(conn, site_id)
    assert site.name == "Shoe shop" and site.allowed_domains == []


async def test_site_names_are_shown_as_text(client: Client) -> None:
    site_id = await client.sign_up(site_name="<script>alert(1)</script>")
    for path in ("/account/sites", f"/account/sites/{site_id}", f"/account/sites/{site_id}/theme"):
        body = text(await client.get(path))
        assert "<script>alert(1)</script>" not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
