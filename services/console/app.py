"""The console's Tornado application: routes under /account, CSRF on every form,
signed cookies, /healthz and /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
import tornado.web

from libs.common.observability import observability_routes
from services.console.context import HERE, Console
from services.console.handlers import auth, confirm, conversations, operators, sites, theme

SITE = r"/account/sites/([^/]+)"


class RootRedirect(tornado.web.RequestHandler):
    def get(self) -> None:
        self.redirect("/account/")


def make_app(console: Console, **overrides: Any) -> tornado.web.Application:
    async def redis_ok() -> None:
        await console.redis.ping()

    async def mysql_ok() -> None:
        def ping() -> None:
            with console.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        await asyncio.to_thread(ping)

    routes: list[Any] = [
        (r"/", RootRedirect),
        (r"/account/?", sites.Home),
        (r"/account/signup", auth.SignUp),
        (r"/account/login", auth.LogIn),
        (r"/account/logout", auth.LogOut),
        (r"/account/confirm/([A-Za-z0-9_-]{1,100})", confirm.ConfirmAddress),
        (r"/account/sites", sites.SiteList),
        (SITE, sites.SiteOverview),
        (SITE + r"/theme", theme.Customiser),
        (SITE + r"/operators", operators.Operators),
        (SITE + r"/operators/remove", operators.RemoveOperator),
        (SITE + r"/conversations", conversations.Conversations),
        (SITE + r"/conversations/([^/]+)", conversations.Transcript),
        *observability_routes({"redis": redis_ok, "mysql": mysql_ok}),
    ]
    settings: dict[str, Any] = {
        "console": console,
        "cookie_secret": console.settings.secret_key,
        "xsrf_cookies": True,
        # The CSRF token cookie: not readable by scripts, never sent cross-site.
        "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Strict", "secure": console.secure_cookies},
        "login_url": "/account/login",
        "static_path": str(HERE / "static"),
        "static_url_prefix": "/account/static/",
        "default_handler_class": sites.NotFoundPage,
        **overrides,
    }
    return tornado.web.Application(routes, **settings)
