"""The Tornado application: every route, built from the dependencies it is given."""

from __future__ import annotations

import tornado.web

from libs.common.observability import observability_routes
from libs.common.web import log_request
from services.rpc_frontend.context import Frontend
from services.rpc_frontend.handlers import api, pages, receive
from services.rpc_frontend.metrics import CONNECTIONS

SITE = r"([^/]+)"  # any segment: a malformed id gets the 404 that explains the shape


def make_app(frontend: Frontend) -> tornado.web.Application:
    assets = pages.Assets.load(frontend.settings.public_url)
    deps: dict[str, object] = {"frontend": frontend}
    page_deps: dict[str, object] = {"frontend": frontend, "assets": assets}

    async def redis_ok() -> None:
        await frontend.redis.ping()  # the connection requests use

    routes: list[tuple[str, type[tornado.web.RequestHandler], dict[str, object]]] = [
        (
            r"/embed\.js",
            pages.AssetHandler,
            {
                "body": assets.loader,
                "content_type": "text/javascript; charset=utf-8",
                "assets": assets,
                "versioned": False,
            },
        ),
        (
            r"/widget\.js",
            pages.AssetHandler,
            {
                "body": assets.widget_js,
                "content_type": "text/javascript; charset=utf-8",
                "assets": assets,
                "versioned": True,
            },
        ),
        (
            r"/openapi\.json",
            pages.AssetHandler,
            {"body": assets.openapi, "content_type": "application/json", "assets": assets, "versioned": False},
        ),
        (rf"/chat/{SITE}", pages.ChatPageHandler, page_deps),
        (rf"/preview/{SITE}", pages.PreviewHandler, page_deps),
        (r"/demo", pages.DemoHandler, page_deps),
        (rf"/api/sites/{SITE}/widget", api.WidgetConfigHandler, deps),
        (rf"/api/sites/{SITE}/session", api.SessionHandler, deps),
        (rf"/api/sites/{SITE}/pageview", api.PageViewHandler, deps),
        (rf"/api/sites/{SITE}/messages", api.MessagesHandler, deps),
        (rf"/api/sites/{SITE}/typing", api.TypingHandler, deps),
        (rf"/api/sites/{SITE}/visitor", api.VisitorHandler, deps),
        (rf"/api/sites/{SITE}/end", api.EndHandler, deps),
        (rf"/api/sites/{SITE}/offline", api.OfflineHandler, deps),
        (rf"/api/sites/{SITE}/status", api.StatusHandler, deps),
        (rf"/api/sites/{SITE}/poll", receive.PollHandler, deps),
        (rf"/api/sites/{SITE}/ws", receive.ReceiveSocket, deps),
    ]
    checks = {"redis": redis_ok, "rabbitmq": frontend.bus.ping, "serving": frontend.drain.check}
    CONNECTIONS.set_function(lambda: frontend.hub.connections)
    return tornado.web.Application(
        [*routes, *observability_routes(checks)],
        compress_response=True,  # the widget's JS and CSS shrink ~4x
        websocket_max_message_size=receive.MAX_WS_MESSAGE_BYTES,
        # Protocol-level pings find peers that vanished without a close frame (a phone
        # losing signal) and keep NAT mappings alive; 45 s sits under the common 60 s
        # idle timeouts; a peer that does not answer before the next ping is dropped.
        websocket_ping_interval=receive.PING_INTERVAL_S,
        websocket_ping_timeout=receive.PING_INTERVAL_S,
        default_handler_class=_NotFound,
        log_function=log_request,  # visitor tokens travel in query strings: never logged
    )


class _NotFound(tornado.web.RequestHandler):
    def prepare(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish('{"error": "no such page", "status": 404}')
