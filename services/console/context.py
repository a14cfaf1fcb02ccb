"""What every console handler needs, built once by main() (or a test) and passed in."""

from __future__ import annotations

import secrets
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import redis.asyncio as aioredis
import sqlalchemy as sa
from argon2 import PasswordHasher

from libs.common.settings import Settings
from libs.common.sitedir import SiteDirectory
from libs.common.state.presence import OperatorPresence
from services.console.confirmations import TranscriptConfirmations
from services.console.login_limit import MAX_FAILURES_PER_IP, MAX_SIGNUPS_PER_IP, LoginLimiter, SignUpLimiter
from services.console.sessions import OwnerSessions
from services.console.store import ConsoleStore

HERE = Path(__file__).parent


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: what CSP and postMessage compare."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Console:
    settings: Settings
    engine: sa.Engine
    redis: aioredis.Redis
    store: ConsoleStore = field(init=False)
    sites: SiteDirectory = field(init=False)
    presence: OperatorPresence = field(init=False)
    sessions: OwnerSessions = field(init=False)
    confirmations: TranscriptConfirmations = field(init=False)
    login_limit: LoginLimiter = field(init=False)
    signup_limit: SignUpLimiter = field(init=False)
    # argon2id with the library's defaults (RFC 9106's second recommended option).
    hasher: PasswordHasher = field(default_factory=PasswordHasher)
    max_signups_per_ip: int = MAX_SIGNUPS_PER_IP
    max_login_failures_per_ip: int = MAX_FAILURES_PER_IP
    templates: jinja2.Environment = field(init=False)
    # Verified when an address is unknown, so a wrong address takes as long as a wrong
    # password and response times do not reveal who has an account.
    dummy_hash: str = field(init=False)

    def __post_init__(self) -> None:
        self.store = ConsoleStore(self.engine)
        self.sites = SiteDirectory(self.redis, self.engine, self.settings)
        self.presence = OperatorPresence(self.redis, self.settings)
        self.sessions = OwnerSessions(self.redis, self.settings)
        self.confirmations = TranscriptConfirmations(self.engine, self.settings)
        self.login_limit = LoginLimiter(self.redis, self.settings, self.max_login_failures_per_ip)
        self.signup_limit = SignUpLimiter(self.redis, self.settings, self.max_signups_per_ip)
        self.dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        # Autoescape everything: owners' and visitors' text is always shown as text.
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    @property
    def secure_cookies(self) -> bool:
        return self.settings.console_public_url.startswith("https://")
