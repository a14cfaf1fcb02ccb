"""Issue 11's reproductions against the status image: a clear 404 (or a drawn image),
never a 500, and the server answers normally afterwards."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from libs.common import db
from libs.common.settings import Settings
from services.status_image.render import ImageRenderer, one_line
from tests.status_image.conftest import StatusServer

Start = Callable[..., Awaitable[StatusServer]]


async def assert_healthy(server: StatusServer, site_id: str) -> None:
    response = await server.fetch(f"/status/{site_id}.json")
    assert response.code == 200, response.code
    assert json.loads(response.body)["online"] is False


MATH_DIGITS = "\U0001d7cf\U0001d7d0\U0001d7d1\U0001d7d2"  # bold 1234: Unicode digits, not ASCII


@pytest.mark.parametrize(
    "site", ["١٢٣٤-١٢٣٤٥-١٢-١٢٣٤", "1234-12345-12-1234\n", MATH_DIGITS + "-12345-12-1234", "x" * 5000]
)
async def test_unicode_digit_and_odd_site_ids_are_404(
    start_server: Start, settings: Settings, make_site: Callable[[], str], site: str
) -> None:
    server = await start_server(settings)
    for path in (f"/status/{quote(site)}.json", f"/status/{quote(site)}/image.png"):
        response = await server.fetch(path)
        assert response.code == 404, (path, response.code)
        assert "site id" in response.headers["X-Habla-Error"]
    await assert_healthy(server, make_site())


@pytest.mark.parametrize("text", ["online\nnow", "a\r\nb", "\x00\x07", "\u200b\ufeff", "\u2028\u2029", "   "])
async def test_theme_text_with_newlines_and_controls_is_drawn(
    start_server: Start, settings: Settings, engine: sa.Engine, make_site: Callable[[], str], text: str
) -> None:
    """A theme row edited by hand (the console refuses these) still gives an image."""
    site_id = make_site()
    with engine.begin() as conn:
        theme = {"texts": {"online_image_text": text, "offline_image_text": text}}
        conn.execute(sa.update(db.sites).where(db.sites.c.id == site_id).values(theme=theme))
    server = await start_server(settings)  # not cached yet: the first request loads it
    response = await server.fetch(f"/status/{site_id}/image.png")
    assert response.code == 200, (response.code, response.headers.get("X-Habla-Error"))
    assert response.headers["Content-Type"] == "image/png"
    await assert_healthy(server, site_id)


def test_one_line_keeps_printable_text_only() -> None:
    assert one_line("Live\nchat:\x00 on\u2028line") == "Live chat: on line"
    assert one_line("\ud800") == ""
    ImageRenderer().status_image("#2e8b57", "a\nb\ud800", online=True)  # draws, does not raise


async def test_wrong_method_is_a_405_with_allow(
    start_server: Start, settings: Settings, make_site: Callable[[], str]
) -> None:
    server = await start_server(settings)
    site_id = make_site()
    response = await server.fetch(f"/status/{site_id}.json", method="POST", body=b"")
    assert response.code == 405
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"GET", "HEAD"}
    await assert_healthy(server, site_id)
