"""Fixtures for the status image: sites in this run's MariaDB, the server in-process,
and a private redis-server that a test may stop (the shared one must never be stopped)."""

from __future__ import annotations

import dataclasses
import io
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
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
from services.status_image.files import StatusFiles
from services.status_image.handlers import make_app
from services.status_image.render import ImageRenderer
from tests.redis_server import PrivateRedis


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
    (and MySQL engine: this run's database unless told otherwise; files: for nginx)."""
    stops: list[Callable[[], Awaitable[None]]] = []
    default_engine = engine

    async def start(
        settings: Settings, engine: sa.Engine = default_engine, files: StatusFiles | None = None
    ) -> StatusServer:
        client = state.connect(settings)
        renderer = ImageRenderer()
        cache = SiteStatusCache(
            client,
            SiteDirectory(client, engine, settings),
            SiteStatusReader(client, settings),
            renderer,
            settings,
            files,
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


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("scripts/setup.sh installs redis-server")
    server = PrivateRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
def private_settings(settings: Settings, private_redis: PrivateRedis) -> Settings:
    return dataclasses.replace(settings, redis_url=private_redis.url)
