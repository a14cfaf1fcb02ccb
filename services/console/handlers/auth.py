"""Sign up, log in, log out."""

from __future__ import annotations

import contextlib
import math

import prometheus_client
from argon2.exceptions import InvalidHashError, VerificationError

from libs.common.ratelimit import RateLimited
from services.console import forms
from services.console.handlers.base import Page
from services.console.sessions import COOKIE_NAME
from services.console.store import EmailTaken

SIGNUPS = prometheus_client.Counter("habla_console_signups_total", "Owner accounts created")
LOGINS = prometheus_client.Counter("habla_console_logins_total", "Log-in attempts", ["result"])


def _safe_next(target: str) -> str:
    """Only same-site console paths: never an open redirect to another host, and only
    printable ASCII (a CR/LF would split the Location header; Tornado refuses it with a 500)."""
    printable = target.isascii() and target.isprintable() and " " not in target
    if printable and target.startswith("/account/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/account/sites"


def _wait(seconds: int) -> str:
    """Seconds under a minute, else minutes (growing delays start at one second)."""
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return _minutes(seconds)


def _minutes(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class SignUp(Page):
    def get(self) -> None:
        if self.account_id is not None:
            self.redirect("/account/sites")
            return
        self.render_page("signup.html", form=forms.Form(values={"site_name": ""}))

    async def post(self) -> None:
        form = forms.Form(
            values={
                "email": self.get_body_argument("email", ""),
                "site_name": self.get_body_argument("site_name", ""),
            }
        )
        ip = self.request.remote_ip or "unknown"
        try:
            await self.console.signup_limit.attempt(ip)
        except RateLimited as exc:
            self.set_header("Retry-After", str(exc.retry_after_s))
            form.errors["form"] = (
                f"Too many new accounts from your network. Please try again in {_minutes(exc.retry_after_s)}."
            )
            self.render_page("signup.html", status=429, form=form)
            return
        password = self.get_body_argument("password", "")
        email, error = forms.email(form.values["email"])
        if error:
            form.errors["email"] = error
        if error := forms.password(password):
            form.errors["password"] = error
        site_name, error = forms.site_name(form.values["site_name"])
        if error:
            form.errors["site_name"] = error
        if form.ok:
            password_hash = await self.db(self.console.hasher.hash, password)
            try:
                account_id, site_id = await self.db(self.console.store.sign_up, email, password_hash, site_name)
            except EmailTaken:
                form.errors["email"] = "An account with this address exists already: log in instead."
        if not form.ok:
            await self.console.signup_limit.failed(ip)
            self.render_page("signup.html", status=400, form=form)
            return
        SIGNUPS.inc()
        await self.console.sites.invalidate(site_id)  # drop a remembered "no such site"
        token = await self.db(self.console.confirmations.request, site_id, email)
        await self.console.confirmations.send_link(email, form.values["site_name"], token)
        self.start_session_cookie(await self.console.sessions.start(account_id))
        self.redirect(f"/account/sites/{site_id}?welcome=1")


class LogIn(Page):
    def get(self) -> None:
        if self.account_id is not None:
            self.redirect("/account/sites")
            return
        self.render_page("login.html", form=forms.Form(), next=_safe_next(self.get_argument("next", "")))

    async def post(self) -> None:
        form = forms.Form(values={"email": self.get_body_argument("email", "")})
        next_url = _safe_next(self.get_body_argument("next", ""))
        password = self.get_body_argument("password", "")
        email, _ = forms.email(form.values["email"])
        ip = self.request.remote_ip or "unknown"
        try:
            await self.console.login_limit.attempt(email, ip)
        except RateLimited as exc:
            LOGINS.labels("rate_limited").inc()
            self.set_header("Retry-After", str(exc.retry_after_s))
            form.errors["form"] = (
                f"Too many failed log-ins. For your account's safety, please wait {_wait(exc.retry_after_s)} "
                "and try again."
            )
            self.render_page("login.html", status=429, form=form, next=next_url)
            return
        account = await self.db(self.console.store.credentials, email)
        if not await self._verify(account, password):
            LOGINS.labels("failed").inc()  # already counted by attempt()
            form.errors["form"] = "That email address and password do not match an account."
            self.render_page("login.html", status=400, form=form, next=next_url)
            return
        assert account is not None
        account_id, password_hash = account
        assert password_hash is not None
        LOGINS.labels("ok").inc()
        await self.console.login_limit.succeeded(email, ip)
        if self.console.hasher.check_needs_rehash(password_hash):
            new_hash = await self.db(self.console.hasher.hash, password)
            await self.db(self.console.store.set_password_hash, account_id, new_hash)
        # A new token at every log-in: a token planted before log-in is worthless.
        self.start_session_cookie(await self.console.sessions.start(account_id))
        self.redirect(next_url)

    async def _verify(self, account: tuple[int, str | None] | None, password: str) -> bool:
        hasher = self.console.hasher
        if account is None or account[1] is None or not password:
            with contextlib.suppress(VerificationError):
                await self.db(hasher.verify, self.console.dummy_hash, password or "x")
            return False
        try:
            return bool(await self.db(hasher.verify, account[1], password))
        except (VerificationError, InvalidHashError):
            return False


class LogOut(Page):
    async def post(self) -> None:
        token = self.get_signed_cookie(COOKIE_NAME)
        if token:
            await self.console.sessions.end(token.decode())
        self.clear_cookie(COOKIE_NAME, path="/account")
        self.redirect("/account/login")
