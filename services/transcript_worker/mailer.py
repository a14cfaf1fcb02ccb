"""Sending mail over SMTP with aiosmtplib (no AMQP here).

Connections are kept open and reused (a small pool): a new one costs a TCP
handshake and EHLO (plus TLS where used) per message, which halved throughput to a
local sink. ``send_many`` sends a batch over up to POOL_SIZE connections at once, each
carrying several mails one after another. A connection that saw any error is dropped,
never reused; one the server closed (while idle, or between two mails) is replaced
once, transparently. Each mail of a batch has its own outcome, so a failure part-way
through never puts the mails already accepted in doubt.

Failures come out as one of two exceptions, so the consumer can choose: a server
that answered 5xx will never accept this message (``MailRejected``: dead-letter it);
anything else (refused connection, timeout, 4xx) may pass later (``MailUnavailable``:
retry with backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import aiosmtplib

from libs.common.settings import Settings
from services.transcript_worker.rendering import OutgoingMail

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
        self._pool_size = pool_size
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[aiosmtplib.SMTP] = []

    async def send(self, mail: OutgoingMail) -> None:
        """Send one mail; raises MailRejected or MailUnavailable."""
        [outcome] = await self.send_many([mail])
        if outcome is not None:
            raise outcome

    async def send_many(self, mails: list[OutgoingMail]) -> list[MailUnavailable | MailRejected | None]:
        """Send ``mails`` over up to POOL_SIZE connections; per mail, None (accepted by
        the server) or why not. A connection that fails (not a refusal: the server is
        gone) ends its session; mails no session could try share that error."""
        outcomes: list[MailUnavailable | MailRejected | None] = [None] * len(mails)
        waiting = deque(range(len(mails)))
        unreachable: list[MailUnavailable] = []

        async def session() -> None:
            async with self._slots:
                client = self._idle.pop() if self._idle else None
                while waiting:
                    index = waiting.popleft()
                    try:
                        client = await self._deliver(client, mails[index])
                    except Exception as exc:  # any failure is this mail's outcome
                        client = None  # _deliver closed it
                        outcomes[index] = error = self._classify(exc)
                        refused = isinstance(exc, aiosmtplib.SMTPResponseException | aiosmtplib.SMTPRecipientsRefused)
                        if isinstance(error, MailUnavailable) and not refused:
                            unreachable.append(error)
                            return
                if client is not None:
                    self._idle.append(client)

        await asyncio.gather(*(session() for _ in range(min(self._pool_size, len(mails)))))
        for index in waiting:  # every session met a dead server before reaching these
            outcomes[index] = unreachable[-1]
        return outcomes

    def _classify(self, exc: BaseException) -> MailUnavailable | MailRejected:
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            codes = [r.code for r in exc.recipients]
            error = f"SMTP server refused every recipient: {'; '.join(str(r) for r in exc.recipients)}"[:500]
            if codes and all(500 <= c < 600 for c in codes):
                return MailRejected(error)
            return MailUnavailable(error)
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            error = f"SMTP server answered {exc.code} {exc.message}"[:500]
            if 500 <= exc.code < 600:
                return MailRejected(error)
            return MailUnavailable(error)
        s = self._settings
        return MailUnavailable(f"cannot reach SMTP server {s.smtp_host}:{s.smtp_port}: {exc}"[:500])

    async def _deliver(self, client: aiosmtplib.SMTP | None, mail: OutgoingMail) -> aiosmtplib.SMTP:
        """Send on ``client`` (or a new connection); returns the connection, still good.
        Any failure closes the connection it happened on and propagates."""
        if client is not None and client.is_connected:
            try:
                await _transaction(client, mail)
                return client
            except aiosmtplib.SMTPServerDisconnected:
                # Closed by the server (idle timeout, restart): one fresh attempt below.
                # If it had taken this mail before closing, without our seeing its
                # reply, this sends it twice, with the same Message-ID: SMTP cannot tell.
                _discard(client)
            except BaseException:
                _discard(client)
                raise
        fresh = await self._connect()
        try:
            await _transaction(fresh, mail)
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
        try:
            if client.is_ehlo_or_helo_needed:  # not done by a STARTTLS or login
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except BaseException:
            _discard(client)
            raise
        return client

    async def close(self) -> None:
        """Say goodbye on the idle connections (at shutdown)."""
        while self._idle:
            client = self._idle.pop()
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit()


async def _transaction(client: aiosmtplib.SMTP, mail: OutgoingMail) -> None:
    """One mail on a greeted connection: MAIL, RCPT for each recipient, DATA. What
    ``sendmail`` does (accepted if any recipient is; SMTPRecipientsRefused if none
    is), without the work our mails never need, a tenth of the SMTP client's time: it
    parses every address twice more (rendering.recipients checked them, and ``mail`` /
    ``rcpt`` still quote and check each for injection) and rewrites the whole
    message's line ends once more to size it (``mime.compose`` writes CRLF only, so
    the SIZE is the length). No RSET after a refusal: a connection that saw any error
    is never reused."""
    options = [f"SIZE={len(mail.data)}"] if client.supports_extension("size") else []
    await client.mail(mail.sender, options=options)
    refused = []
    for recipient in mail.recipients:
        try:
            await client.rcpt(recipient)
        except aiosmtplib.SMTPRecipientRefused as exc:
            refused.append(exc)
    if len(refused) == len(mail.recipients):
        raise aiosmtplib.SMTPRecipientsRefused(refused)
    await client.data(mail.data)


def _discard(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        client.close()
