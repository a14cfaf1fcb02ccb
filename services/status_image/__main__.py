"""`python -m services.status_image`: serve status images on HABLA_STATUS_HOST:HABLA_STATUS_PORT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from libs.common import db, logs, observability, state
from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory
from libs.common.startup import freeze_startup_objects, settings_or_exit
from libs.common.state.presence import SiteStatusReader
from libs.common.web import http_server_options
from services.status_image.cache import SiteStatusCache
from services.status_image.files import StatusFiles
from services.status_image.handlers import make_app
from services.status_image.render import ImageRenderer

log = logging.getLogger("services.status_image")


async def serve(settings: Settings) -> None:
    """Build every dependency once, serve until SIGTERM/SIGINT, then close them."""
    redis = state.connect(settings)
    engine = db.engine(settings)
    renderer = ImageRenderer()
    # With a files directory, nginx (tools/nginx.py) serves what is written there.
    files = StatusFiles(Path(settings.status_files_dir)) if settings.status_files_dir else None
    cache = SiteStatusCache(
        redis, SiteDirectory(redis, engine, settings), SiteStatusReader(redis, settings), renderer, settings, files
    )
    cache.start()

    async def redis_answers() -> None:
        await redis.ping()

    drain = observability.Drain()
    app = make_app(cache, renderer, {"redis": redis_answers, "serving": drain.check})
    # GET and HEAD only: no request needs a body.
    server = observability.listen(
        app, settings.status_host, settings.status_port, settings, **http_server_options(1024)
    )
    # Everything built so far lives as long as the process: move it out of the garbage
    # collector's sight, so the collections that per-request objects trigger do not
    # rescan the imported libraries (SQLAlchemy, Pillow, redis-py …) each time.
    freeze_startup_objects()
    log.info("status image listening", extra={"url": f"http://{settings.status_host}:{settings.status_port}"})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain.begin(settings.drain_s)
    log.info("stopping")
    server.stop()
    await server.close_all_connections()
    await cache.stop()
    await redis.aclose()
    engine.dispose()


def main() -> int:
    settings = settings_or_exit("status_image")
    logs.configure("status_image", settings)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
