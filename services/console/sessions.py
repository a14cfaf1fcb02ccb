"""Owner log-in sessions, kept in Redis so that logging out really ends them.

The browser holds a random token in a signed, HTTP-only cookie; Redis maps it to the
account. A stolen cookie stops working at log-out or after the TTL, which a stateless
signed cookie could not promise.
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

from libs.common.settings import Settings

# Two weeks: owners come back to read transcripts now and then; longer-lived
# sessions would outlast a lost laptop by too much.
SESSION_TTL_S = 14 * 24 * 3600
COOKIE_NAME = "habla_owner"


class OwnerSessions:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings

    def _key(self, token: str) -> str:
        return self._settings.redis_key("console", "session", token)

    async def start(self, account_id: int) -> str:
        # 32 bytes from the OS CSPRNG: unguessable (OWASP session management: >= 64 bits).
        token = secrets.token_urlsafe(32)
        await self._redis.set(self._key(token), str(account_id), ex=SESSION_TTL_S)
        return token

    async def account(self, token: str) -> int | None:
        raw = await self._redis.get(self._key(token))
        return int(raw) if raw else None

    async def end(self, token: str) -> None:
        await self._redis.delete(self._key(token))
