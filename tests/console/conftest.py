"""The console served in-process on a free port against this run's MariaDB and Redis,
and a small cookie-keeping HTTP client that fills in the CSRF token like a browser."""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import http.cookies
import re
import shutil
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.testing

from libs.common.settings import Settings
from services.console.app import make_app
from services.console.context import Console

PASSWORD = "correct horse battery"


@dataclass
class RunningConsole:
    url: str
    console: Console

    @property
    def settings(self) -> Settings:
        return self.console.settings


@contextlib.asynccontextmanager
async def running_console(
    settings: Settings,
    engine: sa.Engine,
    redis: aioredis.Redis,
    console_options: dict[str, Any] | None = None,
    port: int | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningConsole]:
    """The console app on a free port of this process's event loop, stopped afterwards.

    Every test signs up and logs in from 127.0.0.1, so the per-IP limits are raised
    unless a test passes its own ``console_options``."""
    console_options = console_options or {"max_signups_per_ip": 100_000, "max_login_failures_per_ip": 100_000}
    # A port chosen beforehand when other processes must know the console's origin
    # (the frontend lets only the console frame its preview).
    if port is None:
        sock, port = tornado.testing.bind_unused_port()
    else:
        sock = tornado.netutil.bind_sockets(port, "127.0.0.1")[0]
    console_settings = dataclasses.replace(
        settings, console_port=port, console_public_url=f"http://127.0.0.1:{port}", **overrides
    )
    console = Console(console_settings, engine, redis, **console_options)
    server = tornado.httpserver.HTTPServer(make_app(console))
    server.add_sockets([sock])
    try:
        yield RunningConsole(f"http://127.0.0.1:{port}", console)
    finally:
        server.stop()
        await server.close_all_connections()


@pytest.fixture(scope="session")
async def console_server(
    settings: Settings, engine: sa.Engine, redis_client: aioredis.Redis
) -> AsyncIterator[RunningConsole]:
    async with running_console(settings, engine, redis_client) as running:
        yield running


class Client:
    """Keeps cookies (like a browser) and sends the CSRF token with every form."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies: dict[str, str] = {}
        self.http = tornado.httpclient.AsyncHTTPClient()

    def _remember(self, response: tornado.httpclient.HTTPResponse) -> None:
        for header in response.headers.get_list("Set-Cookie"):
            jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                expired = morsel["max-age"] == "0" or (
                    morsel["expires"] and email.utils.parsedate_to_datetime(morsel["expires"]).timestamp() < time.time()
                )
                if expired or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    async def request(self, method: str, path: str, body: str | None = None) -> tornado.httpclient.HTTPResponse:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        response = await self.http.fetch(
            self.base + path, method=method, body=body, headers=headers, follow_redirects=False, raise_error=False
        )
        self._remember(response)
        return response

    async def get(self, path: str) -> tornado.httpclient.HTTPResponse:
        return await self.request("GET", path)

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True
    ) -> tornado.httpclient.HTTPResponse:
        fields = dict(data or {})
        if csrf:
            if "_xsrf" not in self.cookies:
                await self.get("/account/login")  # any page sets the token cookie
            fields.setdefault("_xsrf", self.cookies["_xsrf"])
        return await self.request("POST", path, urllib.parse.urlencode(fields))

    async def sign_up(self, email: str | None = None, site_name: str = "Shoe shop") -> str:
        """Sign up a fresh account; returns the first site's id."""
        response = await self.post(
            "/account/signup",
            {"email": email or unique_email(), "password": PASSWORD, "site_name": site_name},
        )
        assert response.code == 302, text(response)
        match = re.match(r"^/account/sites/([0-9-]+)\?welcome=1$", response.headers["Location"])
        assert match, response.headers["Location"]
        return match.group(1)


def unique_email(prefix: str = "owner") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@shop.example"


def text(response: tornado.httpclient.HTTPResponse) -> str:
    return (response.body or b"").decode()


def field_error(response: tornado.httpclient.HTTPResponse, field: str) -> str:
    """The error shown right under a form field (empty if none)."""
    match = re.search(rf'<p class="error" id="{re.escape(field)}-error" role="alert">(.*?)</p>', text(response), re.S)
    assert match, f"no error slot for {field}"
    return match.group(1).strip()


@pytest.fixture
def client(console_server: RunningConsole) -> Client:
    return Client(console_server.url)


@pytest.fixture
def make_client(console_server: RunningConsole) -> type[Client] | object:
    return lambda: Client(console_server.url)


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium through Playwright (playwright install cannot download here)."""
    if not shutil.which("/usr/bin/chromium"):
        pytest.skip("/usr/bin/chromium is missing: scripts/setup.sh installs it")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        await browser.close()
