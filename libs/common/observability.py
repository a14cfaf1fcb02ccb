"""The `/healthz` + `/metrics` convention every service follows.

HTTP services mount ``observability_routes(checks)`` in their own Tornado app; the
gateway and the worker, which serve no HTTP otherwise, call ``serve(port, checks)``.
A check is an async callable that raises when its dependency is unusable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import prometheus_client
import tornado.httpserver
import tornado.web

from libs.common.settings import Settings

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[object]]

# A dependency that does not answer within this many seconds counts as down; load
# balancers typically time a health probe out at 5 s, so stay under it.
CHECK_TIMEOUT_S = 2.0


class NotReady(Exception):
    """Raised by a check for a state that is no fault (a gateway standing by): /healthz
    says 503 with the text alone ("standby: …"), not as an error with a class name."""


async def run_checks(checks: Mapping[str, Check]) -> tuple[bool, dict[str, str]]:
    async def one(check: Check) -> str:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
            return "ok"
        except NotReady as exc:
            return str(exc)[:300]
        except Exception as exc:  # a health probe reports every failure, whatever it is
            return f"error: {exc.__class__.__name__}: {exc}"[:300]

    names = list(checks)
    results = await asyncio.gather(*(one(checks[n]) for n in names))
    report = dict(zip(names, results, strict=True))
    return all(r == "ok" for r in results), report


class HealthHandler(tornado.web.RequestHandler):
    """200 {"status": "ok"} when every dependency answers, else 503 with the reasons."""

    def initialize(self, checks: Mapping[str, Check]) -> None:
        self.checks = checks

    async def get(self) -> None:
        started = time.perf_counter()
        healthy, report = await run_checks(self.checks)
        self.set_status(200 if healthy else 503)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(
            json.dumps(
                {
                    "status": "ok" if healthy else "unavailable",
                    "checks": report,
                    "took_ms": round((time.perf_counter() - started) * 1000, 1),
                }
            )
        )


class MetricsHandler(tornado.web.RequestHandler):
    """Prometheus text exposition of the default registry."""

    def get(self) -> None:
        self.set_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
        self.finish(prometheus_client.generate_latest())


class Drain:
    """A stopping HTTP service first fails its health check, then stops listening.

    A load balancer that probes /healthz stops sending new requests while the service
    still answers the ones already on their way; only then does the listener close.
    """

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._settled = asyncio.Event()
        self._settled.set()

    def enter(self) -> None:
        """A request started (its handler's prepare)."""
        self.in_flight += 1
        self._settled.clear()

    def leave(self) -> None:
        """A request finished (its handler's on_finish)."""
        self.in_flight = max(self.in_flight - 1, 0)
        if not self.in_flight:
            self._settled.set()

    async def settle(self, timeout_s: float) -> None:
        """Until every request in flight has finished, at most ``timeout_s``: closing the
        connections or the broker under a running handler would half-do its work."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout_s)

    async def check(self) -> None:
        if self.draining:
            raise RuntimeError("draining: this instance is stopping")

    async def begin(self, seconds: float) -> None:
        self.draining = True
        if seconds > 0:
            log.info("draining: /healthz answers 503 while requests finish", extra={"seconds": seconds})
            await asyncio.sleep(seconds)


def observability_routes(checks: Mapping[str, Check]) -> list[Any]:
    return [
        (r"/healthz", HealthHandler, {"checks": checks}),
        (r"/metrics", MetricsHandler),
    ]


def listen(
    app: tornado.web.Application, host: str, port: int, settings: Settings, *, reuse_port: bool = False, **options: Any
) -> tornado.httpserver.HTTPServer:
    """Serve ``app``; behind HABLA_TRUSTED_PROXIES, the client address comes from them.

    Tornado then takes the last X-Forwarded-For entry not itself a trusted proxy: the
    one our proxy appended. Without trusted proxies the header is ignored, so nobody
    picks the address a per-IP limit counts. (Trusting a proxy means the service is
    reachable only through it, as in docker-compose's network.) ``options`` go to the
    HTTPServer (libs.common.web.http_server_options: slow-client timeouts, body size);
    ``reuse_port``: several processes listen on the same port (SO_REUSEPORT).
    """
    trusted = settings.trusted_proxy_list
    server = tornado.httpserver.HTTPServer(app, xheaders=bool(trusted), trusted_downstream=trusted or None, **options)
    server.listen(port, address=host, reuse_port=reuse_port)
    return server


def serve(host: str, port: int, checks: Mapping[str, Check]) -> tornado.httpserver.HTTPServer:
    """Start /healthz and /metrics on their own port (services without an HTTP app)."""
    app = tornado.web.Application(observability_routes(checks))
    server = app.listen(port, address=host)
    log.info("health and metrics listening", extra={"url": f"http://{host}:{port}/healthz"})
    return server
