"""Log-in and sign-up limits, on the shared limiter (libs/common/ratelimit.py).

Log-ins: why per (address, IP) pair with growing delays, and not "5 failures lock the
account". A lock per address lets anyone lock an owner out by typing wrong passwords
for them; a delay per pair slows exactly the one who is guessing. Each pair gets
``FREE_ATTEMPTS`` attempts, then must wait 1 s, 2 s, 4 s … (at most 15 minutes)
between attempts, so a guesser from one address manages about 100 tries a day while
the owner, on their own network, is never held up by someone else's guessing; a
correct password clears the pair. The attempt is counted *before* the password is
checked, in one Lua script, so 15 guesses sent at once get at most FREE_ATTEMPTS + 1
checks. Per IP, a fixed window stops one client from walking through many addresses
(failures only: a correct password gives its count back). What remains — a botnet
guessing one owner's password from thousands of IPs — is slowed by argon2 and the
password rules; locking the account would hand those same IPs a way to lock it.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from libs.common.ratelimit import RateLimited, RateLimiter
from libs.common.settings import Settings

# OWASP's "a handful of attempts" before slowing down: 5 covers a few typos.
FREE_ATTEMPTS = 5
FIRST_DELAY_S = 1.0
# A guesser is never made to wait more than this between tries (nor is an owner who
# forgot their password for a day); 15 min is OWASP's usual lockout length.
MAX_DELAY_S = 15 * 60
# A pair not tried for a day starts afresh.
FORGET_S = 24 * 3600
# An office behind one NAT may hold several owners who mistype: failures per IP per window.
MAX_FAILURES_PER_IP = 20
WINDOW_S = 15 * 60


def _pair(email: str, ip: str) -> str:
    return f"{email}|{ip}"


class LoginLimiter:
    def __init__(
        self, redis: aioredis.Redis, settings: Settings, max_failures_per_ip: int = MAX_FAILURES_PER_IP
    ) -> None:
        self._limits = RateLimiter(redis, settings)
        self.max_failures_per_ip = max_failures_per_ip

    async def attempt(self, email: str, ip: str) -> None:
        """Count one log-in attempt before the password is checked; RateLimited says how long to wait."""
        await self._limits.hit("login-ip", ip, self.max_failures_per_ip, "failed log-ins", WINDOW_S)
        try:
            await self._limits.backoff(
                "login-pair",
                _pair(email, ip),
                "failed log-ins",
                free=FREE_ATTEMPTS,
                first_delay_s=FIRST_DELAY_S,
                max_delay_s=MAX_DELAY_S,
                forget_s=FORGET_S,
            )
        except RateLimited:
            await self._limits.refund("login-ip", ip)  # refused before any check: not a failure
            raise

    async def succeeded(self, email: str, ip: str) -> None:
        await self._limits.reset("login-pair", _pair(email, ip))
        await self._limits.refund("login-ip", ip)


# Accounts created per IP address per hour: a person makes one, an office a few; a
# script making hundreds of accounts (and sites) is stopped after 10.
MAX_SIGNUPS_PER_IP = 10
SIGNUP_WINDOW_S = 3600


class SignUpLimiter:
    """Sign-ups per client IP in a fixed one-hour window, counted before the work."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, max_per_ip: int = MAX_SIGNUPS_PER_IP) -> None:
        self._limits = RateLimiter(redis, settings)
        self.max_per_ip = max_per_ip

    async def attempt(self, ip: str) -> None:
        await self._limits.hit("signup-ip", ip, self.max_per_ip, "new accounts", SIGNUP_WINDOW_S)

    async def failed(self, ip: str) -> None:
        """The form was refused (a typo): it does not count as an account made."""
        await self._limits.refund("signup-ip", ip)
