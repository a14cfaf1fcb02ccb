"""HTTP: the status image and its JSON twin, served from memory.

A request for a site already in memory runs no coroutine and touches no network: the
handler method returns None and Tornado finishes the response at once. Every answer
says ``Cache-Control: no-cache`` (browsers revalidate each time, so a status change
shows on the next page view) and carries an ETag per (look, state), so revalidation
costs a 304 of a few bytes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from typing import Any

import tornado.web

from libs.common import siteids
from libs.common.observability import Check, observability_routes
from libs.common.web import set_allow_header
from services.status_image import metrics
from services.status_image.cache import SiteEntry, SiteStatusCache
from services.status_image.render import ImageRenderer, state_json

MALFORMED = "malformed site id: expected four groups of digits like 4324-24618-10-8812"


class StatusHandler(tornado.web.RequestHandler):
    """Shared by both endpoints: find the site in memory (or load it once), then answer."""

    endpoint = "other"

    def initialize(self, cache: SiteStatusCache, renderer: ImageRenderer) -> None:
        self.cache = cache
        self.renderer = renderer

    def get(self, site_id: str) -> Awaitable[None] | None:
        entry = self.cache.lookup(site_id)
        if entry is not None:
            self.answer(entry)
            return None
        try:
            siteids.check_site_id(site_id)
        except ValueError as exc:
            # The header gets a fixed text: the id came from the URL and may hold anything.
            self.not_found(MALFORMED, str(exc))
            return None
        return self._load_then_answer(site_id)

    head = get

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            set_allow_header(self)
        super().write_error(status_code, **kwargs)

    async def _load_then_answer(self, site_id: str) -> None:
        self.answer(await self.cache.load(site_id))

    def answer(self, entry: SiteEntry) -> None:
        if entry.look is None:
            self.not_found(entry.error, entry.error)
            return
        self.cache.answered_by_tornado(entry)
        self.found(entry, entry.online and self.cache.redis_up)

    def found(self, entry: SiteEntry, online: bool) -> None:
        raise NotImplementedError

    def not_found(self, header_reason: str, detail: str) -> None:
        raise NotImplementedError

    def send(self, content_type: str, body: bytes, etag: str | None) -> None:
        """Finish with ``body``, or a bodiless 304 if the client has this ETag already."""
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        if etag is None:
            self.finish(body)
            return
        self.set_header("Etag", etag)
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
        else:
            self.finish(body)


class ImageHandler(StatusHandler):
    """GET/HEAD /status/<site_id>/image.png"""

    endpoint = "image"

    def found(self, entry: SiteEntry, online: bool) -> None:
        assert entry.look is not None
        image = entry.look.image(online)
        self.send("image/png", image.body, image.etag)

    def not_found(self, header_reason: str, detail: str) -> None:
        # A tiny transparent image, not an error page: the owner's page shows no broken
        # image icon, and whoever debugs it reads the reason in the header.
        self.set_status(404)
        self.set_header("X-Habla-Error", header_reason)
        self.send("image/png", self.renderer.neutral.body, None)


class JsonHandler(StatusHandler):
    """GET/HEAD /status/<site_id>.json, for scripts: {"online": …, "operators_available": …}"""

    endpoint = "json"

    def set_default_headers(self) -> None:
        # Public information, meant to be fetched by scripts on the site owner's pages.
        self.set_header("Access-Control-Allow-Origin", "*")

    def found(self, entry: SiteEntry, online: bool) -> None:
        body, etag = state_json(online, entry.operators if online else 0)
        self.send("application/json", body, etag)

    def not_found(self, header_reason: str, detail: str) -> None:
        self.set_status(404)
        self.set_header("X-Habla-Error", header_reason)
        self.send("application/json", json.dumps({"error": detail}).encode(), None)


# (endpoint, status) -> its counter and histogram children: prometheus_client's labels()
# takes a lock and builds a key on every call, a measurable share of a ~100 µs request.
_bound_metrics: dict[tuple[str, int], tuple[Any, Any]] = {}


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado calls this after every response: count it and time it."""
    key = (getattr(handler, "endpoint", "other"), handler.get_status())
    bound = _bound_metrics.get(key)
    if bound is None:
        bound = _bound_metrics[key] = (metrics.REQUESTS.labels(key[0], str(key[1])), metrics.LATENCY.labels(key[0]))
    bound[0].inc()
    bound[1].observe(handler.request.request_time())


def make_app(cache: SiteStatusCache, renderer: ImageRenderer, checks: Mapping[str, Check]) -> tornado.web.Application:
    deps: dict[str, Any] = {"cache": cache, "renderer": renderer}
    return tornado.web.Application(
        [
            # [^/]+ so malformed ids reach the handler and get the clear 404, not Tornado's.
            (r"/status/([^/]+)/image\.png", ImageHandler, deps),
            (r"/status/([^/]+)\.json", JsonHandler, deps),
            *observability_routes(checks),
        ],
        log_function=log_request,
    )
