"""The customiser's server side: saving, every validation error, contrast warnings,
and that a theme can never carry markup into a page."""

from __future__ import annotations

import html

import pytest
import sqlalchemy as sa

from libs.common import theme
from libs.common.db import site_store
from libs.common.sitedir import SiteDirectory
from services.console import contrast
from tests.console.conftest import Client, RunningConsole, field_error, text


def theme_form(**changes: str) -> dict[str, str]:
    data = {f"colour_{k}": v for k, v in theme.DEFAULT_COLOURS.items()}
    data.update({f"text_{k}": v for k, v in theme.DEFAULT_TEXTS.items()})
    data.update(changes)
    return data


async def test_customiser_shows_a_picker_for_every_colour_and_an_input_for_every_text(client: Client) -> None:
    site_id = await client.sign_up()
    body = text(await client.get(f"/account/sites/{site_id}/theme"))
    for key, value in theme.DEFAULT_COLOURS.items():
        assert f'type="color" id="colour_{key}" name="colour_{key}" value="{value}"' in body
    for key in theme.DEFAULT_TEXTS:
        assert f'name="text_{key}"' in body
    assert f"/preview/{site_id}" in body and 'id="mock-widget"' in body


async def test_saving_stores_the_theme_and_the_site_directory_serves_it(
    client: Client, engine: sa.Engine, console_server: RunningConsole
) -> None:
    site_id = await client.sign_up()
    directory = SiteDirectory(console_server.console.redis, engine, console_server.settings)
    await directory.get(site_id)  # cache the old theme
    response = await client.post(
        f"/account/sites/{site_id}/theme",
        theme_form(colour_header_background="#AA0000", colour_button_background="#003300", text_welcome_title=" Hi! "),
    )
    assert response.code == 302 and response.headers["Location"] == f"/account/sites/{site_id}/theme?saved=1"
    with engine.connect() as conn:
        stored = site_store.get_site(conn, site_id).theme
    assert stored["colours"]["header_background"] == "#aa0000"
    assert stored["colours"]["button_background"] == "#003300"
    assert stored["texts"]["welcome_title"] == "Hi!"
    assert (await directory.get(site_id)).theme == stored
    page = text(await client.get(f"/account/sites/{site_id}/theme?saved=1"))
    assert "Saved." in page and 'value="#aa0000"' in page and "--habla-header-background: #aa0000;" in page


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"colour_header_text": "red"}, "colour_header_text", "Header text must be a colour like #1f6f8b."),
        ({"colour_text": "#12345"}, "colour_text", "Window text must be a colour like #1f6f8b."),
        (
            {"colour_background": "#fff;}</style><script>alert(1)</script>"},
            "colour_background",
            "Window background must be a colour like #1f6f8b.",
        ),
        ({"colour_online_image": ""}, "colour_online_image", "Status image: online must be a colour like #1f6f8b."),
        ({"text_welcome_title": "   "}, "text_welcome_title", "Title must not be empty."),
        ({"text_welcome_title": "x" * 61}, "text_welcome_title", "Title must be at most 60 characters."),
        (
            {"text_away_message": "y" * 301},
            "text_away_message",
            "Away message (nobody available) must be at most 300 characters.",
        ),
        ({"text_offline_email_label": ""}, "text_offline_email_label", "Offline form: email label must not be empty."),
        (
            {"text_input_placeholder": "z" * 61},
            "text_input_placeholder",
            "Input placeholder must be at most 60 characters.",
        ),
    ],
)
async def test_every_invalid_theme_value_gets_an_error_next_to_it_and_nothing_is_saved(
    client: Client, engine: sa.Engine, changes: dict[str, str], field: str, message: str
) -> None:
    site_id = await client.sign_up()
    response = await client.post(f"/account/sites/{site_id}/theme", theme_form(**changes))
    assert response.code == 400
    assert html.unescape(field_error(response, field)) == message
    assert "Nothing was saved" in text(response)
    assert "<script>alert(1)</script>" not in text(response)
    with engine.connect() as conn:
        assert site_store.get_site(conn, site_id).theme == theme.default_theme()


async def test_markup_in_texts_is_stored_as_text_and_shown_escaped(client: Client, engine: sa.Engine) -> None:
    site_id = await client.sign_up()
    payload = '<img src=x onerror="alert(1)">'
    response = await client.post(f"/account/sites/{site_id}/theme", theme_form(text_welcome_title=payload))
    assert response.code == 302
    with engine.connect() as conn:
        assert site_store.get_site(conn, site_id).theme["texts"]["welcome_title"] == payload
    for path in (f"/account/sites/{site_id}/theme", f"/account/sites/{site_id}"):
        body = text(await client.get(path))
        assert payload not in body and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in body


async def test_low_contrast_is_warned_about_but_still_saved(client: Client, engine: sa.Engine) -> None:
    site_id = await client.sign_up()
    response = await client.post(
        f"/account/sites/{site_id}/theme", theme_form(colour_header_text="#ffffff", colour_header_background="#eeeeee")
    )
    assert response.code == 302
    page = await client.get(f"/account/sites/{site_id}/theme")
    warning = html.unescape(field_error_like(page, "colour_header_text-contrast"))
    assert warning.startswith("Hard to read in the header: contrast 1.2:1")
    assert field_error_like(page, "colour_text-contrast") == ""  # defaults are readable


def field_error_like(response: object, element_id: str) -> str:
    import re

    match = re.search(rf'id="{element_id}" data-contrast-for="[a-z_]+">(.*?)</p>', text(response), re.S)  # type: ignore[arg-type]
    assert match
    return match.group(1).strip()


def test_contrast_ratio_matches_wcag_reference_values() -> None:
    assert contrast.ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast.ratio("#ffffff", "#ffffff") == pytest.approx(1.0)
    # WebAIM's checker: #767676 on white is 4.54:1 (the lightest grey passing AA).
    assert contrast.ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    assert contrast.warnings(theme.DEFAULT_COLOURS) == []
    low = contrast.warnings({**theme.DEFAULT_COLOURS, "button_text": "#777777", "button_background": "#ffffff"})
    assert [(w.text_key, w.background_key) for w in low] == [("button_text", "button_background")]
