"""What every console page shares: the logged-in owner, security headers, rendering,
owned-site lookup and error pages."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

import tornado.web
from markupsafe import Markup

from libs.common.db import site_store
from libs.common.web import set_allow_header
from services.console.context import Console, origin
from services.console.sessions import COOKIE_NAME, SESSION_TTL_S

T = TypeVar("T")

# Messages for error pages a person may meet; anything else shows the HTTP reason.
ERROR_MESSAGES = {
    403: "This form has expired or was sent from another site. Go back, reload the page and try again.",
    404: "There is no such page in your account. If you followed a link to a site, check that it is one of yours.",
    500: "Something went wrong on our side. Please try again in a moment.",
}


class Page(tornado.web.RequestHandler):
    """Base of every console page."""

    account_id: int | None = None
    account_email: str | None = None
    nonce: str = ""

    @property
    def console(self) -> Console:
        console: Console = self.application.settings["console"]
        return console

    def set_default_headers(self) -> None:
        # A fresh nonce each time headers are reset (error pages reset them too).
        self.nonce = secrets.token_urlsafe(16)
        settings = self.console.settings
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; "
            f"style-src 'self' 'nonce-{self.nonce}'; "
            f"img-src 'self' data: {origin(settings.status_public_url)}; "
            f"frame-src {origin(settings.public_url)}; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
        )
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        token = self.get_signed_cookie(COOKIE_NAME, max_age_days=SESSION_TTL_S / 86400)
        if token:
            self.account_id = await self.console.sessions.account(token.decode())
        if self.account_id is not None:
            self.account_email = await self.db(self.console.store.account_email, self.account_id)
            if self.account_email is None:  # account deleted since
                self.account_id = None
        self.current_user = self.account_id

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking MySQL call off the event loop."""
        return await asyncio.to_thread(fn, *args)

    @property
    def owner(self) -> int:
        """The logged-in account (handlers using this are @authenticated)."""
        assert self.account_id is not None
        return self.account_id

    async def owned_site(self, site_id: str) -> site_store.Site:
        """The site if the logged-in owner has it; 404 alike for unknown and foreign ids."""
        site = await self.db(self.console.store.owned_site, self.owner, site_id)
        if site is None:
            raise tornado.web.HTTPError(404)
        return site

    def render_page(self, template: str, status: int = 200, **context: Any) -> None:
        self.set_status(status)
        page = self.console.templates.get_template(template)
        self.finish(
            page.render(
                xsrf=Markup(self.xsrf_form_html()),
                static=self.static_url,
                nonce=self.nonce,
                account_email=self.account_email,
                **context,
            )
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            set_allow_header(self)
        try:
            reason = HTTPStatus(status_code).phrase
        except ValueError:
            reason = "Error"
        self.render_page(
            "error.html",
            status=status_code,
            title=reason,
            message=ERROR_MESSAGES.get(status_code, reason),
        )

    def start_session_cookie(self, token: str) -> None:
        self.set_signed_cookie(
            COOKIE_NAME,
            token,
            expires_days=SESSION_TTL_S / 86400,
            httponly=True,
            secure=self.console.secure_cookies,
            # Lax: following a link to the console from an email still shows you logged
            # in; cross-site POSTs carry no cookie (and would fail the CSRF check anyway).
            samesite="Lax",
            path="/account",
        )
