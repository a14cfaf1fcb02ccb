"""The console in real Chromium: sign up, customise with the live local preview,
save; every page on a phone-sized viewport without errors. Screenshots go to
tests/artifacts/console-*.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from libs.common.db import site_store
from libs.common.sitedir import SiteDirectory
from tests.console.conftest import PASSWORD, RunningConsole, unique_email
from tests.console.test_conversations import archive_conversation

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}  # iPhone 12-15 CSS viewport
DESKTOP = {"width": 1280, "height": 900}


def watch_errors(page: Any, console_url: str) -> list[str]:
    """Script errors, and console errors other than the preview/status servers being
    absent (this test runs the console alone; test_end_to_end runs them all)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def on_console(message: Any) -> None:
        if message.type != "error":
            return
        text = message.text
        if "Failed to load resource" in text and console_url not in (message.location or {}).get("url", console_url):
            return
        if "responded with a status of 400" in text:
            return  # a form answered with its validation errors (checked by the test)
        if "postMessage" in text and "does not match the recipient window's origin" in text:
            return
        errors.append(f"console: {text} at {message.location}")

    page.on("console", on_console)
    return errors


async def sign_up(page: Any, base: str, email: str, site_name: str) -> str:
    await page.goto(f"{base}/account/signup")
    await page.fill("#email", email)
    await page.fill("#password", PASSWORD)
    await page.fill("#site_name", site_name)
    await page.click("button[type=submit].primary")
    await page.wait_for_url("**/account/sites/*?welcome=1")
    return str(page.url.split("/account/sites/")[1].split("?")[0])


async def style(page: Any, selector: str, prop: str) -> str:
    return str(await page.eval_on_selector(selector, f"el => getComputedStyle(el).getPropertyValue('{prop}')"))


async def test_sign_up_customise_with_live_preview_and_save(
    chromium: Any, console_server: RunningConsole, engine: sa.Engine, artifacts: Path
) -> None:
    base = console_server.url
    context = await chromium.new_context(viewport=DESKTOP)
    page = await context.new_page()
    errors = watch_errors(page, base)
    site_id = await sign_up(page, base, unique_email("browser"), "Browser shop")

    # The snippet is there at once, ready to copy, with the preview beside it.
    snippet = await page.input_value("#snippet")
    assert f"'{site_id}'" in snippet and "/embed.js" in snippet
    assert f"/status/{site_id}/image.png" in await page.input_value("#status-html")
    assert await page.is_visible("#mock-widget")
    assert await page.get_attribute("#live-preview", "src") == f"{console_server.settings.public_url}/preview/{site_id}"
    await page.screenshot(path=str(artifacts / "console-signed-up.png"), full_page=True)

    await page.click("nav.tabs >> text=Customise")
    await page.wait_for_url(f"**/account/sites/{site_id}/theme")
    assert await style(page, "#mock-widget .mock-header", "background-color") == "rgb(31, 111, 139)"

    # Two colours and the welcome text: the local preview follows as they change.
    await page.fill("#colour_header_background", "#aa0000")
    await page.fill("#colour_button_background", "#004400")
    await page.fill("#text_welcome_title", "Hej! Ask us anything")
    assert await style(page, "#mock-widget .mock-header", "background-color") == "rgb(170, 0, 0)"
    assert await style(page, "#mock-widget .mock-button", "background-color") == "rgb(0, 68, 0)"
    assert await style(page, "#mock-widget", "--habla-header-background") == "#aa0000"
    assert await page.text_content("#mock-widget .mock-header") == "Hej! Ask us anything"

    # Contrast warnings appear and disappear as the owner picks.
    assert await page.text_content("#colour_header_text-contrast") == ""
    await page.fill("#colour_header_text", "#bb1111")
    warning = await page.text_content("#colour_header_text-contrast")
    assert warning is not None and warning.startswith("Hard to read in the header: contrast 1.")
    await page.screenshot(path=str(artifacts / "console-customiser-warning.png"), full_page=True)
    await page.fill("#colour_header_text", "#ffffff")
    assert await page.text_content("#colour_header_text-contrast") == ""

    # Markup typed into a text is shown as text in the preview.
    await page.fill("#text_welcome_message", "<b>bold?</b>")
    assert await page.text_content("#mock-widget .mock-welcome") == "<b>bold?</b>"
    assert await page.eval_on_selector("#mock-widget .mock-welcome", "el => el.children.length") == 0
    await page.fill("#text_welcome_message", "Questions? We're here.")

    await page.click("#theme-form button[type=submit]")
    await page.wait_for_url(f"**/account/sites/{site_id}/theme?saved=1")
    assert "Saved." in (await page.text_content("main") or "")
    assert await style(page, "#mock-widget .mock-header", "background-color") == "rgb(170, 0, 0)"
    await page.screenshot(path=str(artifacts / "console-customiser-saved.png"), full_page=True)

    with engine.connect() as conn:
        stored = site_store.get_site(conn, site_id).theme
    assert stored["colours"]["header_background"] == "#aa0000"
    assert stored["colours"]["button_background"] == "#004400"
    assert stored["texts"]["welcome_title"] == "Hej! Ask us anything"
    directory = SiteDirectory(console_server.console.redis, engine, console_server.settings)
    config = await directory.get(site_id)
    assert config.theme["colours"]["header_background"] == "#aa0000"
    assert config.theme["texts"]["welcome_title"] == "Hej! Ask us anything"
    assert errors == []
    await context.close()


async def test_every_page_works_on_a_phone(
    chromium: Any, console_server: RunningConsole, engine: sa.Engine, artifacts: Path
) -> None:
    base = console_server.url
    context = await chromium.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = await context.new_page()
    errors = watch_errors(page, base)
    for path in ("/account/signup", "/account/login"):
        await page.goto(base + path)
        await page.screenshot(path=str(artifacts / f"console-phone{path.replace('/', '-')}.png"), full_page=True)
    site_id = await sign_up(page, base, unique_email("phone"), "Phone shop")

    # A validation error on the phone: shown under the field.
    await page.goto(f"{base}/account/sites/{site_id}/operators")
    await page.fill("#jid", "not an address")
    await page.click("form[action$='/operators'] button[type=submit]")
    assert "is not a bare XMPP address" in (await page.text_content("#jid-error") or "")
    await page.fill("#jid", "ana@example.org")
    await page.fill("#display_name", "Ana")
    await page.click("form[action$='/operators'] button[type=submit]")
    await page.wait_for_url("**/operators?added=ana@example.org")
    conversation = archive_conversation(
        engine, site_id, [("visitor", "Hello from a phone", False), ("operator", "Hi!", False)], visitor_name="Kari"
    )

    pages = {
        "sites": "/account/sites",
        "overview": f"/account/sites/{site_id}",
        "customise": f"/account/sites/{site_id}/theme",
        "operators": f"/account/sites/{site_id}/operators",
        "conversations": f"/account/sites/{site_id}/conversations",
        "transcript": f"/account/sites/{site_id}/conversations/{conversation}",
    }
    for name, path in pages.items():
        response = await page.goto(base + path)
        assert response is not None and response.status == 200, path
        # Nothing wider than the screen: no sideways scrolling on a phone.
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than the phone"
        await page.screenshot(path=str(artifacts / f"console-phone-{name}.png"), full_page=True)
    assert "Hello from a phone" in (await page.text_content(".transcript") or "")

    # The copy button puts the snippet on the clipboard.
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    await page.goto(f"{base}/account/sites/{site_id}")
    await page.click("button[data-copy=snippet]")
    await page.wait_for_selector("button[data-copy=snippet]:text('Copied')")
    assert await page.evaluate("navigator.clipboard.readText()") == await page.input_value("#snippet")

    await page.click("text=Log out")
    await page.wait_for_url("**/account/login")
    assert errors == []
    await context.close()
