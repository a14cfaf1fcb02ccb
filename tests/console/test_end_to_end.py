"""The whole promise, across services: an owner signs up, pastes the snippet into a
page (served by this test), changes two colours and the welcome text in the console,
saves; reloading that page shows the widget in the new colours and text, and the
site's status image changes colour. Needs rpc_frontend and status_image (other
issues): they run as real subprocesses on free ports against this run's servers.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
import tornado.httpclient
import tornado.httpserver
import tornado.testing
import tornado.web

from libs.common.settings import Settings
from tests.console.conftest import running_console, unique_email
from tests.console.test_browser import sign_up

ROOT = Path(__file__).resolve().parents[2]
NEEDED = [ROOT / "services" / "rpc_frontend" / "__main__.py", ROOT / "services" / "status_image" / "__main__.py"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not all(path.exists() for path in NEEDED),
        reason="needs services/rpc_frontend and services/status_image (issues 3 and 5); run after merging them",
    ),
]

# Generous: two cold Python services on a shared 2-core machine.
START_TIMEOUT_S = 60


def free_port() -> int:
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    return int(port)


async def wait_healthy(url: str, process: asyncio.subprocess.Process, name: str) -> None:
    client = tornado.httpclient.AsyncHTTPClient()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}")
        try:
            response = await client.fetch(f"{url}/healthz", raise_error=False, request_timeout=2)
            if response.code == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.3)
    raise TimeoutError(f"{name} did not answer {url}/healthz within {START_TIMEOUT_S} s")


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[dict[str, str]]:
    """rpc_frontend and status_image as healthy subprocesses; {"frontend": url, "status": url}."""
    frontend_port, status_port, console_port = free_port(), free_port(), free_port()
    urls = {
        "frontend": f"http://127.0.0.1:{frontend_port}",
        "status": f"http://127.0.0.1:{status_port}",
        "console_port": str(console_port),
    }
    env = {
        **os.environ,
        "HABLA_AMQP_URL": settings.amqp_url,
        "HABLA_REDIS_URL": settings.redis_url,
        "HABLA_REDIS_PREFIX": settings.redis_prefix,
        "HABLA_MYSQL_URL": settings.mysql_url,
        "HABLA_SECRET_KEY": settings.secret_key,
        "HABLA_FRONTEND_HOST": "127.0.0.1",
        "HABLA_FRONTEND_PORT": str(frontend_port),
        "HABLA_FRONTEND_ID": f"console-e2e-{frontend_port}",
        "HABLA_PUBLIC_URL": urls["frontend"],
        "HABLA_STATUS_HOST": "127.0.0.1",
        "HABLA_STATUS_PORT": str(status_port),
        "HABLA_STATUS_PUBLIC_URL": urls["status"],
        # Only the console may frame the frontend's preview: it must know where it is.
        "HABLA_CONSOLE_PUBLIC_URL": f"http://127.0.0.1:{console_port}",
    }
    processes = [
        (name, await asyncio.create_subprocess_exec(sys.executable, "-m", f"services.{name}", cwd=ROOT, env=env))
        for name in ("rpc_frontend", "status_image")
    ]
    try:
        await wait_healthy(urls["frontend"], processes[0][1], "rpc_frontend")
        await wait_healthy(urls["status"], processes[1][1], "status_image")
        yield urls
    finally:
        for _, process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for _, process in processes:
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.fixture
async def shop_page() -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A customer's page on an origin of its own; the test puts the pasted snippet in it."""
    pasted: dict[str, str] = {"snippet": ""}

    class ShopPage(tornado.web.RequestHandler):
        def get(self) -> None:
            self.set_header("Cache-Control", "no-store")
            self.finish(
                "<!doctype html><html><head><meta charset='utf-8'><title>Shoe shop</title></head>"
                "<body><h1>Shoes</h1><p>Our finest boots.</p>" + pasted["snippet"] + "</body></html>"
            )

    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/shop", ShopPage)]))
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}/shop", pasted
    server.stop()


async def widget_frame(page: Any) -> Any:
    """The frame the widget draws in (the one holding the widget's CSS variables)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for frame in page.frames:
            try:
                value = await frame.evaluate(
                    "getComputedStyle(document.documentElement).getPropertyValue('--habla-header-background')"
                )
            except Exception:  # a frame navigating away; look again
                continue
            if value.strip() and await frame.evaluate("document.body && document.body.innerText.length > 0"):
                return frame
        await asyncio.sleep(0.2)
    raise AssertionError("the widget did not appear on the page")


async def widget_colours(frame: Any) -> dict[str, Any]:
    return dict(
        await frame.evaluate(
            """() => {
              const root = getComputedStyle(document.documentElement);
              const backgrounds = Array.from(document.querySelectorAll('*'))
                .filter(el => el.getClientRects().length > 0)
                .map(el => getComputedStyle(el).backgroundColor);
              return {
                header: root.getPropertyValue('--habla-header-background').trim(),
                offline_image: root.getPropertyValue('--habla-offline-image').trim(),
                backgrounds: backgrounds,
                text: document.body.innerText,
              };
            }"""
        )
    )


async def status_colour(status_url: str, site_id: str, save_to: Path | None = None) -> tuple[int, int, int]:
    """The most common pixel colour of the site's status PNG (its background)."""
    from PIL import Image

    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        f"{status_url}/status/{site_id}/image.png", headers={"Cache-Control": "no-cache"}
    )
    assert response.headers["Content-Type"].startswith("image/png")
    if save_to is not None:
        await asyncio.to_thread(save_to.write_bytes, response.body)
    image = Image.open(io.BytesIO(response.body)).convert("RGB")
    counts = image.getcolors(maxcolors=image.width * image.height) or []
    best = max(counts, key=lambda count: count[0])[1]
    assert isinstance(best, tuple)
    return (int(best[0]), int(best[1]), int(best[2]))


async def test_saved_theme_reaches_the_widget_on_a_real_page_and_the_status_image(
    chromium: Any,
    services: dict[str, str],
    shop_page: tuple[str, dict[str, str]],
    settings: Settings,
    engine: sa.Engine,
    redis_client: aioredis.Redis,
    artifacts: Path,
) -> None:
    shop_url, pasted = shop_page
    async with running_console(
        settings,
        engine,
        redis_client,
        port=int(services["console_port"]),
        public_url=services["frontend"],
        status_public_url=services["status"],
    ) as console:
        context = await chromium.new_context(viewport={"width": 1280, "height": 900})
        owner = await context.new_page()
        site_id = await sign_up(owner, console.url, unique_email("e2e"), "Shoe shop")

        # Copy the snippet from the console into the customer's page.
        pasted["snippet"] = await owner.input_value("#snippet")
        visitor = await context.new_page()
        await visitor.goto(shop_url)
        before = await widget_colours(await widget_frame(visitor))
        assert before["header"] == "#1f6f8b"
        assert await status_colour(services["status"], site_id) == (0x8A, 0x8A, 0x8A)  # offline, default grey

        # Customise: two colours and the welcome text; the live preview (the real
        # widget in an iframe) follows before anything is saved.
        await owner.goto(f"{console.url}/account/sites/{site_id}/theme")
        await owner.fill("#colour_header_background", "#aa0000")
        await owner.fill("#colour_offline_image", "#123456")
        await owner.fill("#text_welcome_title", "Hej! Ask us anything")
        preview = owner.frame_locator("#live-preview")
        await preview.locator("body").wait_for()
        preview_frame = next(f for f in owner.frames if f"/preview/{site_id}" in f.url)
        await preview_frame.wait_for_function(
            "getComputedStyle(document.documentElement).getPropertyValue('--habla-header-background').trim()"
            " === '#aa0000'"
        )
        await preview_frame.wait_for_function("document.body.innerText.includes('Hej! Ask us anything')")
        await owner.screenshot(path=str(artifacts / "console-e2e-live-preview.png"), full_page=True)
        await owner.click("#theme-form button[type=submit]")
        await owner.wait_for_url(f"**/account/sites/{site_id}/theme?saved=1")

        # The owner's page is unchanged; a reload shows the new look.
        await visitor.reload()
        frame = await widget_frame(visitor)
        await visitor.evaluate("window.habla('api.box.expand')")  # the documented JavaScript API
        await asyncio.sleep(0.3)  # let the box open (no assertion depends on the animation)
        after = await widget_colours(frame)
        assert after["header"] == "#aa0000"
        assert "rgb(170, 0, 0)" in after["backgrounds"]  # something visible is drawn in it
        assert "Hej! Ask us anything" in after["text"]
        await visitor.screenshot(path=str(artifacts / "console-e2e-shop-page.png"))

        # The status image follows (pub/sub invalidation; allow a few seconds).
        deadline = time.monotonic() + 10
        while await status_colour(services["status"], site_id) != (0x12, 0x34, 0x56):
            assert time.monotonic() < deadline, "the status image kept its old colour"
            await asyncio.sleep(0.3)
        await status_colour(services["status"], site_id, save_to=artifacts / "console-e2e-status.png")
        await context.close()
