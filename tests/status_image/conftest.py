"""Fixtures for the status image: sites in this run's MariaDB, the server in-process,
and a private redis-server that a test may stop (the shared one must never be stopped)."""

from __future__ import annotations

import dataclasses
import io
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
import tornado.httpclient
import tornado.httpserver
import tornado.testing
from PIL import Image

from libs.common import state
from libs.common.db import site_store
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory
from libs.common.state.presence import SiteStatusReader
from services.status_image.cache import SiteStatusCache
from services.status_image.handlers import make_app
from services.status_image.render import ImageRenderer


@dataclass
class StatusServer:
    url: str
    cache: SiteStatusCache
    renderer: ImageRenderer

    async def fetch(self, path: str, **kwargs: object) -> tornado.httpclient.HTTPResponse:
        client = tornado.httpclient.AsyncHTTPClient()
        return await client.fetch(self.url + path, raise_error=False, **kwargs)

    async def is_online(self, site_id: str) -> bool:
        """What the image says, judged by its pixels (the online and offline colours differ)."""
        response = await self.fetch(f"/status/{site_id}/image.png")
        assert response.code == 200, (response.code, response.headers.get("X-Habla-Error"))
        return top_colour(response.body) == "#2e8b57"  # theme.DEFAULT_COLOURS["online_image"]


def top_colour(png: bytes) -> str:
    """The colour of the image's top edge, midway (background, away from dot and text)."""
    with Image.open(io.BytesIO(png)) as image:
        r, g, b, *_ = image.convert("RGBA").getpixel((80, 2))  # type: ignore[misc]
    return f"#{r:02x}{g:02x}{b:02x}"


@pytest.fixture
def make_site(engine: sa.Engine) -> Callable[[], str]:
    def make() -> str:
        with engine.begin() as conn:
            account = site_store.account_for_email(conn, "status@example.test")
            return site_store.create_site(conn, account, "Status image test").id

    return make


@pytest.fixture
async def start_server(
    engine: sa.Engine,
) -> AsyncIterator[Callable[..., Awaitable[StatusServer]]]:
    """Factory: the status image app in this process, on a free port, for given settings
    (and MySQL engine: this run's database unless told otherwise)."""
    stops: list[Callable[[], Awaitable[None]]] = []
    default_engine = engine

    async def start(settings: Settings, engine: sa.Engine = default_engine) -> StatusServer:
        client = state.connect(settings)
        renderer = ImageRenderer()
        cache = SiteStatusCache(
            client, SiteDirectory(client, engine, settings), SiteStatusReader(client, settings), renderer, settings
        )
        cache.start()

        async def redis_answers() -> None:
            await client.ping()

        sock, port = tornado.testing.bind_unused_port()
        server = tornado.httpserver.HTTPServer(make_app(cache, renderer, {"redis": redis_answers}))
        server.add_sockets([sock])

        async def stop() -> None:
            server.stop()
            await cache.stop()
            await client.aclose()

        stops.append(stop)
        return StatusServer(f"http://127.0.0.1:{port}", cache, renderer)

    yield start
    for stop in stops:
        await stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, on a fixed free port, that can be killed and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="habla-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("scripts/setup.sh installs redis-server")
    server = PrivateRedis()
    server.start()
    yield server
    if server.process is not None:
        server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def private_settings(settings: Settings, private_redis: PrivateRedis) -> Settings:
    return dataclasses.replace(settings, redis_url=private_redis.url)
