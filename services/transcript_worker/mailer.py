"""Sending mail over SMTP with aiosmtplib (no AMQP here).

Connections are kept open and reused (a few at once): a new one costs a TCP
handshake and EHLO (plus TLS where used) per message, which halved throughput to a
local sink. A connection that saw any error is dropped, never reused; one the server
closed while idle is replaced once, transparently.

Failures come out as one of two exceptions, so the consumer can choose: a server
that answered 5xx will never accept this message (``MailRejected``: dead-letter it);
anything else (refused connection, timeout, 4xx) may pass later (``MailUnavailable``:
retry with backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
from email.message import EmailMessage

import aiosmtplib

from libs.common.settings import Settings

# Parallel SMTP sessions per worker process: relays commonly allow a handful of
# concurrent connections per client before they start deferring (Postfix's
# smtpd_client_connection_count_limit is 50, hosted relays often 5-10); 4 stays polite.
POOL_SIZE = 4


class MailUnavailable(Exception):
    """The SMTP server could not take the message now; try again later."""


class MailRejected(Exception):
    """The SMTP server refused the message for good (5xx)."""


class Mailer:
    def __init__(self, settings: Settings, pool_size: int = POOL_SIZE) -> None:
        self._settings = settings
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[aiosmtplib.SMTP] = []

    async def send(self, message: EmailMessage) -> None:
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            try:
                client = await self._deliver(client, message)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                codes = [r.code for r in exc.recipients]
                error = f"SMTP server refused every recipient: {'; '.join(str(r) for r in exc.recipients)}"[:500]
                if codes and all(500 <= c < 600 for c in codes):
                    raise MailRejected(error) from exc
                raise MailUnavailable(error) from exc
            except aiosmtplib.SMTPResponseException as exc:
                error = f"SMTP server answered {exc.code} {exc.message}"[:500]
                if 500 <= exc.code < 600:
                    raise MailRejected(error) from exc
                raise MailUnavailable(error) from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                s = self._settings
                raise MailUnavailable(f"cannot reach SMTP server {s.smtp_host}:{s.smtp_port}: {exc}"[:500]) from exc
            self._idle.append(client)

    async def _deliver(self, client: aiosmtplib.SMTP | None, message: EmailMessage) -> aiosmtplib.SMTP:
        """Send on ``client`` (or a new connection); returns the connection, still good.
        Any failure closes the connection it happened on and propagates."""
        if client is not None and client.is_connected:
            try:
                await client.send_message(message)
                return client
            except aiosmtplib.SMTPServerDisconnected:
                pass  # closed by the server while idle: one fresh attempt below
            except BaseException:
                _discard(client)
                raise
        fresh = await self._connect()
        try:
            await fresh.send_message(message)
        except BaseException:
            _discard(fresh)
            raise
        return fresh

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self._settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_user or None,
            password=s.smtp_password or None,
            start_tls=s.smtp_starttls,
            use_tls=False,
            timeout=s.smtp_timeout_s,
        )
        await client.connect()
        return client

    async def close(self) -> None:
        """Say goodbye on the idle connections (at shutdown)."""
        while self._idle:
            client = self._idle.pop()
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit()


def _discard(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        client.close()
