"""What every widget API handler shares: JSON in and out, errors, site, origin, limits."""

from __future__ import annotations

import contextlib
import json
import logging
from types import TracebackType
from typing import Any

import tornado.web

from libs.common.ratelimit import RateLimited
from libs.common.sitedir import SiteConfig, UnknownSite
from libs.common.web import RedactedLogs, allowed_methods, set_allow_header
from services.rpc_frontend.chat import OUTAGES, RETRY_AFTER_S, Invalid, SessionExpired, TooLarge, Visitor
from services.rpc_frontend.context import Frontend
from services.rpc_frontend.inputs import json_object
from services.rpc_frontend.origins import origin_allowed
from services.rpc_frontend.visits import IP_BUCKET, IP_REQUESTS, IP_UNKNOWN_SITE_BUCKET, IP_UNKNOWN_SITES, IpLimit

# Typing and identity events a visitor may send per line allowed: a start and a stop
# per line, plus slack for someone who types, deletes and types again.
EVENTS_PER_LINE = 4

# Largest request body: the longest message (4 bytes per character in UTF-8, up to 6
# when JSON-escaped) plus the other fields fits in 64 KiB at the default 2000 chars.
MAX_BODY_BYTES = 64 * 1024

log = logging.getLogger(__name__)


class ApiError(tornado.web.HTTPError):
    """An error the widget (or a developer) can act on; rendered as {"error": message}."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(status, reason=None)
        self.message = message
        self.retry_after_s = retry_after_s


class ApiHandler(RedactedLogs):
    frontend: Frontend
    site: SiteConfig

    _in_flight = False

    def initialize(self, frontend: Frontend) -> None:
        self.frontend = frontend

    def prepare(self) -> None:
        # Counted so that a stopping frontend lets running requests finish (Drain.settle).
        self._in_flight = True
        self.frontend.drain.enter()

    def on_finish(self) -> None:
        if self._in_flight:
            self._in_flight = False
            self.frontend.drain.leave()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    # --- errors ------------------------------------------------------------------------
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._set_cors_headers()  # send_error cleared them; the widget must read the error
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = exc.message
            if exc.retry_after_s is not None:
                self.set_header("Retry-After", str(exc.retry_after_s))
        elif isinstance(exc, OUTAGES):
            # Redis or RabbitMQ is down for a moment: nothing was lost, try again.
            self.set_status(503)
            status_code = 503
            self.set_header("Retry-After", str(RETRY_AFTER_S))
            message = "temporarily unavailable; send again in a moment (with the same message_id)"
        elif status_code == 405:
            set_allow_header(self)
            message = f"{self.request.method} is not supported here; use {', '.join(allowed_methods(self))}"
        else:
            message = "internal error; try again in a moment"
        self.finish(json.dumps({"error": message, "status": status_code}))

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(value, OUTAGES):  # an outage is a warning (503), not a bug
            log.warning("answered 503: %s", value, extra={"path": self.request.path})
            return
        super().log_exception(typ, value, tb)

    async def _guard(self, call: Any) -> Any:
        """Run a domain call, turning its exceptions into HTTP errors."""
        try:
            return await call
        except Invalid as exc:
            raise ApiError(400, str(exc)) from None
        except TooLarge as exc:
            raise ApiError(413, str(exc)) from None
        except RateLimited as exc:
            raise limit_refusal(exc) from None
        except SessionExpired as exc:
            raise ApiError(401, str(exc)) from None

    def reply(self, payload: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload))

    # --- request parts --------------------------------------------------------------------
    async def load_site(self, site_id: str) -> SiteConfig:
        """The site, if it exists and this browser origin may use it (sets CORS headers)."""
        # Any page may read *why* it was refused (404/403 say nothing secret), so a site
        # owner sees the reason in the browser console; nothing else is served to it.
        self.cors_origin = self.request.headers.get("Origin")
        # Limits first, before any lookup: a flood costs one Redis call per request.
        # Errors carry CORS headers (write_error), so the widget reads a 429's Retry-After.
        await admit_ip(self.frontend, self.request.remote_ip or "-")
        try:
            self.site = await self.frontend.sitecache.config(site_id)
        except UnknownSite as exc:
            await count_unknown_site(self.frontend, self.request.remote_ip or "-")
            raise ApiError(404, str(exc)) from None
        self._allow_origin()
        return self.site

    def held_site(self, site_id: str) -> SiteConfig | None:
        """The site from the frontend's memory, origin checked, without counting the IP
        (no Redis at all); None when memory has no copy (then ``load_site``). The caller
        counts the IP in its own round trip (``ip_limit``), or with ``admit_ip`` before
        any other answer."""
        held = self.frontend.sitecache.held_config(site_id)
        if held is None:
            return None
        self.cors_origin = self.request.headers.get("Origin")
        self.site = held
        return held

    def ip_limit(self) -> IpLimit:
        settings = self.frontend.settings
        return IpLimit(self.request.remote_ip or "-", settings.ip_requests_per_min, settings.ip_unknown_sites_per_min)

    def _allow_origin(self) -> None:
        origin = self.cors_origin
        if not origin_allowed(origin, self.request.host, self.site.allowed_domains):
            raise ApiError(
                403, f"origin {origin} may not use site {self.site.site_id}: add its domain in the site's settings"
            )
        self._set_cors_headers()

    cors_origin: str | None = None

    def _set_cors_headers(self) -> None:
        if self.cors_origin:
            self.set_header("Access-Control-Allow-Origin", self.cors_origin)
            self.set_header("Access-Control-Expose-Headers", "Retry-After")
            self.set_header("Vary", "Origin")

    def json_body(self) -> dict[str, Any]:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is over {MAX_BODY_BYTES} bytes")
        try:
            return json_object(self.request.body or b"{}")
        except Invalid as exc:
            raise ApiError(400, str(exc)) from None

    async def load_visitor(self, token: Any) -> Visitor:
        visitor = await self.frontend.chat.visitor(token, self.site.site_id) if isinstance(token, str) else None
        if visitor is None:
            raise ApiError(401, "unknown or expired visitor token: start a session first (POST …/session)")
        return visitor

    async def limit_events(self, visitor_id: str) -> None:
        await self._guard(limit_events(self.frontend, visitor_id))

    async def limit_messages(self, key: str) -> None:
        await self._guard(limit_messages(self.frontend, key))

    # --- CORS preflight ---------------------------------------------------------------------
    async def options(self, site_id: str, *_: str) -> None:
        await self.load_site(site_id)
        self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "Content-Type")
        self.set_header("Access-Control-Max-Age", "600")  # browsers cap it at 2 h (Chrome) anyway
        self.set_status(204)
        self.finish()


# --- limits shared by the HTTP handlers and the WebSocket ----------------------------------
def limit_refusal(exc: RateLimited) -> ApiError:
    """The 429 for a refusal; an IP asking for unknown sites is told to check the id."""
    if exc.what == IP_UNKNOWN_SITES:
        wait = exc.retry_after_s
        return ApiError(429, f"too many requests for unknown site ids: wait {wait} s and check the id", wait)
    return ApiError(429, str(exc), exc.retry_after_s)


async def admit_ip(frontend: Frontend, ip: str) -> None:
    """Every request from ``ip``, and its misses: ApiError 429 before any site lookup."""
    settings = frontend.settings
    try:
        # An IP that keeps asking for sites that do not exist is refused before the
        # lookup too; both counters in one round trip.
        await frontend.limits.hit_unless(
            IP_BUCKET,
            ip,
            settings.ip_requests_per_min,
            IP_REQUESTS,
            other=(IP_UNKNOWN_SITE_BUCKET, ip, settings.ip_unknown_sites_per_min),
            other_what=IP_UNKNOWN_SITES,
        )
    except RateLimited as exc:
        raise limit_refusal(exc) from None


async def count_unknown_site(frontend: Frontend, ip: str) -> None:
    with contextlib.suppress(RateLimited):  # this request gets its 404; the next ones a 429
        await frontend.limits.hit(
            IP_UNKNOWN_SITE_BUCKET, ip, frontend.settings.ip_unknown_sites_per_min, IP_UNKNOWN_SITES
        )


async def limit_events(frontend: Frontend, visitor_id: str) -> None:
    """Typing/identity events: a multiple of the visitor's line limit."""
    per_min = frontend.settings.visitor_messages_per_min * EVENTS_PER_LINE
    await frontend.limits.hit("evt", visitor_id, per_min, "events")


async def limit_messages(frontend: Frontend, key: str) -> None:
    await frontend.limits.hit("msg", key, frontend.settings.visitor_messages_per_min, "messages")
