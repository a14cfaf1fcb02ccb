"""Assets and pages: /embed.js, the widget's JS/CSS, /chat, /preview, /demo, /openapi.json."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tornado.web

from libs.common import siteids, snippets
from libs.common.db import site_store
from libs.common.sitedir import UnknownSite
from libs.common.web import set_allow_header
from services.rpc_frontend.context import Frontend

STATIC = Path(__file__).resolve().parents[1] / "static"
# The loader's URL is in every customer page and cannot carry a version, so it is
# cached briefly: a fixed loader reaches every visitor within 5 minutes.
LOADER_MAX_AGE_S = 300
# Versioned widget assets (?v=<content hash>) never change under their URL.
VERSIONED_MAX_AGE_S = 365 * 24 * 3600


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL, as CSP and postMessage compare origins."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def script_json(value: Any) -> str:
    """JSON safe to put inside a <script> element (no "</script>", no HTML comment)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass(frozen=True)
class Assets:
    loader: bytes
    widget_js: bytes  # with widget.css inside: one request, and nothing to delay the host page
    openapi: bytes
    version: str

    @classmethod
    def load(cls, public_url: str) -> Assets:
        base = script_json(public_url.rstrip("/")).encode()
        css = script_json((STATIC / "widget.css").read_text()).encode()
        widget_js = (
            (STATIC / "widget.js").read_bytes().replace(b'"__HABLA_BASE__"', base).replace(b'"__HABLA_CSS__"', css)
        )
        version = hashlib.sha256(widget_js).hexdigest()[:12]
        loader = (
            (STATIC / "embed.js")
            .read_bytes()
            .replace(b'"__HABLA_BASE__"', base)
            .replace(b"__HABLA_VERSION__", version.encode())
        )
        openapi = (STATIC / "openapi.json").read_bytes()
        return cls(loader, widget_js, openapi, version)


class AssetHandler(tornado.web.RequestHandler):
    def initialize(self, body: bytes, content_type: str, assets: Assets, versioned: bool) -> None:
        self.body, self.content_type, self.assets, self.versioned = body, content_type, assets, versioned

    def get(self) -> None:
        self.set_header("Content-Type", self.content_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Access-Control-Allow-Origin", "*")  # public code, loaded from any site
        if self.versioned and self.get_query_argument("v", "") == self.assets.version:
            self.set_header("Cache-Control", f"public, max-age={VERSIONED_MAX_AGE_S}, immutable")
        else:
            self.set_header("Cache-Control", f"public, max-age={LOADER_MAX_AGE_S}")
        self.finish(self.body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            set_allow_header(self)
        super().write_error(status_code, **kwargs)


def widget_page(assets: Assets, title: str, config: dict[str, Any]) -> str:
    """A page of our own that runs the widget directly (hosted chat, preview)."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title>"
        "</head>"
        f'<body class="habla-{escape(config["mode"])}">'
        f"<script>window.hablaConfig={script_json(config)};</script>"
        f'<script src="/widget.js?v={assets.version}"></script></body></html>\n'
    )


class PageHandler(tornado.web.RequestHandler):
    def initialize(self, frontend: Frontend, assets: Assets) -> None:
        self.frontend, self.assets = frontend, assets

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            set_allow_header(self)
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = (
            exc.log_message if isinstance(exc, tornado.web.HTTPError) and exc.log_message else "Something went wrong."
        )
        self.finish(f"<!doctype html><title>Habla</title><p>{escape(message)}</p>\n")

    async def site_name(self, site_id: str) -> str:
        try:
            return (await self.frontend.sitecache.config(site_id)).name
        except UnknownSite as exc:
            raise tornado.web.HTTPError(404, str(exc)) from None


class ChatPageHandler(PageHandler):
    """GET /chat/<site>: the chat as a whole page, for links and the status image."""

    async def get(self, site_id: str) -> None:
        name = await self.site_name(site_id)
        self.finish(widget_page(self.assets, f"Chat with {name}", {"mode": "page", "site": site_id}))


class PreviewHandler(PageHandler):
    """GET /preview/<site>[?view=offline]: the widget expanded and themed, no session (the console's live preview)."""

    async def get(self, site_id: str) -> None:
        name = await self.site_name(site_id)
        # ?view=offline previews the offline form (away text and form labels) instead.
        offline = self.get_query_argument("view", "") == "offline"
        console = origin_of(self.frontend.settings.console_public_url)
        # Only the console may frame the preview (which obeys its parent's postMessage):
        # any other page that framed it could make it show texts of its own choosing.
        self.set_header("Content-Security-Policy", f"frame-ancestors {console}")
        config = {"mode": "preview", "site": site_id, "offline": offline, "console_origin": console}
        self.finish(widget_page(self.assets, f"Preview: {name}", config))


class DemoHandler(PageHandler):
    """GET /demo[?site=<id>]: a host page with the real snippet, as a site owner would paste it."""

    async def get(self) -> None:
        site_id = self.get_query_argument("site", "") or self.frontend.settings.demo_site_id
        if not site_id:
            sites = await asyncio.to_thread(self._sites)
            if not sites:
                raise tornado.web.HTTPError(404, "No site yet: create one with `habla site create`.")
            site_id = sites[0]
        if not siteids.is_site_id(site_id):
            raise tornado.web.HTTPError(404, f"{site_id!r} is not a site id.")
        name = await self.site_name(site_id)
        snippet = snippets.embed_snippet(self.frontend.settings.public_url, site_id)
        self.finish(
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>Habla demo: {escape(name)}</title>"
            "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}"
            "pre{background:#f4f4f4;padding:1rem;overflow:auto;font-size:12px}</style></head><body>"
            f"<h1>Habla demo: {escape(name)}</h1>"
            "<p>This page carries the snippet below, exactly as a site owner pastes it. The chat tab sits "
            "in the bottom-right corner.</p>"
            '<p><button type="button" id="open" onclick="habla(\'api.box.expand\')">Open the chat</button> '
            '<button type="button" onclick="habla(\'api.box.shrink\')">Close it</button></p>'
            f"<pre>{escape(snippet)}</pre>"
            f"{snippet}</body></html>\n"
        )

    def _sites(self) -> list[str]:
        with self.frontend.engine.connect() as conn:
            return [site.id for site in site_store.list_sites(conn)]
