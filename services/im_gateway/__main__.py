"""``python -m services.im_gateway``: the XMPP gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from libs.common import db, logs, observability, state
from libs.common.messaging import Bus
from libs.common.settings import EXIT_CONFIG, SettingsError
from libs.common.startup import freeze_startup_objects, settings_or_exit
from services.im_gateway.serving import Serving

log = logging.getLogger("services.im_gateway")


async def main() -> None:
    settings = settings_or_exit("im_gateway")
    logs.configure("im_gateway", settings)
    redis = state.connect(settings)
    engine = db.engine(settings)
    bus = await Bus.connect(settings, "im_gateway")
    gateway = Serving(settings, bus, redis, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = observability.serve(
        settings.ops_host,
        settings.gateway_metrics_port,
        {"redis": redis.ping, "rabbitmq": bus.ping, "xmpp": gateway.check_xmpp},
    )
    freeze_startup_objects()  # the collector's full passes skip what lives as long as the process
    log.info(
        "im_gateway starting",
        extra={"domains": ",".join(gateway.domains), "port": settings.xmpp_component_port},
    )
    try:
        await gateway.run(stop)
    except SettingsError as exc:
        log.error("refusing to run: %s", exc)
        raise SystemExit(EXIT_CONFIG) from None
    finally:
        log.info("closing RabbitMQ, Redis and MySQL connections")
        server.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.close(), 5)  # unacknowledged messages are redelivered anyway
        with contextlib.suppress(Exception):
            await asyncio.wait_for(redis.aclose(), 5)
        engine.dispose()
        log.info("im_gateway stopped")
    if gateway.lease_lost:
        # Non-zero so the supervisor restarts it: it comes back as a standby.
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
