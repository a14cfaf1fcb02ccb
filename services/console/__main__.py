"""`python -m services.console`: the site owner's console on HABLA_CONSOLE_HOST:PORT."""

from __future__ import annotations

import asyncio
import logging
import signal

from libs.common import db, logs, state
from libs.common.settings import Settings
from libs.common.startup import settings_or_exit
from libs.common.web import http_server_options
from services.console.app import make_app
from services.console.context import Console

log = logging.getLogger("services.console")

# The largest console form (a theme: 22 fields of at most 300 characters) is a few KiB.
MAX_FORM_BYTES = 256 * 1024


async def serve(settings: Settings) -> None:
    redis = state.connect(settings)
    engine = db.engine(settings)
    console = Console(settings, engine, redis)
    server = make_app(console).listen(
        settings.console_port, address=settings.console_host, **http_server_options(MAX_FORM_BYTES)
    )
    log.info("console listening", extra={"url": f"http://{settings.console_host}:{settings.console_port}/account/"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("console stopping")
    server.stop()
    await server.close_all_connections()
    await redis.aclose()
    engine.dispose()


def main() -> None:
    settings = settings_or_exit("console")
    logs.configure("console", settings)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
