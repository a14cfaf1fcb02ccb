"""`python -m services.rpc_frontend`: serve the widget and its API on HABLA_FRONTEND_HOST:PORT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from libs.common import db, logs, observability, state, topology
from libs.common.messaging import Bus
from libs.common.settings import Settings
from libs.common.startup import freeze_startup_objects, settings_or_exit
from libs.common.tasks import cancel_and_wait
from libs.common.web import http_server_options
from services.rpc_frontend import processes
from services.rpc_frontend.app import make_app
from services.rpc_frontend.context import Frontend
from services.rpc_frontend.delivery import DeliveryConsumer
from services.rpc_frontend.departures import sweep_forever
from services.rpc_frontend.follow import follow_sites
from services.rpc_frontend.handlers.base import MAX_BODY_BYTES
from services.rpc_frontend.handlers.receive import ReceiveSocket
from services.rpc_frontend.metrics import count_statements
from services.rpc_frontend.unconfirmed import republish_forever

log = logging.getLogger("services.rpc_frontend")

# Requests still running get this long to finish on SIGTERM; parked long-polls are
# answered at once (their widgets re-poll elsewhere).
DRAIN_S = 5.0


async def run(settings: Settings) -> None:
    redis = state.connect(settings)
    engine = db.engine(settings)
    count_statements(engine)
    bus = await Bus.connect(settings, "rpc_frontend")
    await bus.declare_topology()
    frontend = Frontend(settings, redis, bus, engine)
    await bus.consume(topology.frontend_delivery_queue(settings.frontend_id), DeliveryConsumer(frontend.hub).consume)
    followers = [
        asyncio.create_task(follow_sites(frontend)),
        asyncio.create_task(sweep_forever(frontend.chat.departures)),
        asyncio.create_task(republish_forever(frontend.chat.unconfirmed)),
    ]
    server = observability.listen(
        make_app(frontend),
        settings.frontend_host,
        settings.frontend_port,
        settings,
        # Processes of one supervisor share the port; the kernel spreads connections.
        reuse_port=settings.frontend_processes > 1,
        **http_server_options(MAX_BODY_BYTES),
    )
    freeze_startup_objects()  # the collector's full passes skip what lives as long as the process
    log.info(
        "rpc_frontend listening",
        extra={"url": f"http://{settings.frontend_host}:{settings.frontend_port}", "frontend_id": settings.frontend_id},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await frontend.drain.begin(settings.drain_s)
    log.info("rpc_frontend stopping", extra={"connections": frontend.hub.connections})
    server.stop()
    close_sockets(frontend)
    # Requests already running finish before their connections and the bus close.
    await frontend.drain.settle(DRAIN_S)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), DRAIN_S)
    # Bounded and cancelled again while running: a follower stopped while Redis
    # connects can lose its cancellation (libs.common.tasks) and would hang the stop.
    await cancel_and_wait(followers)
    await frontend.chat.unconfirmed.flush()  # or the sweep publishes them again
    await bus.close()
    await redis.aclose()
    engine.dispose()


def close_sockets(frontend: Frontend) -> None:
    """WebSockets are detached from the HTTP server, so close them ourselves; parked
    long-polls are answered now (their widgets poll again, elsewhere)."""
    for listener in frontend.hub.listeners():
        if isinstance(listener, ReceiveSocket):
            listener.shutdown()
        else:
            listener.wake({"type": "log"})


def main() -> None:
    settings = settings_or_exit("rpc_frontend")
    logs.configure("rpc_frontend", settings)
    if settings.frontend_processes > 1 and processes.worker_number() is None:
        raise SystemExit(processes.supervise(settings))
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
