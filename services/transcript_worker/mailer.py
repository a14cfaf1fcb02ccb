"""Sending mail over SMTP with aiosmtplib (no AMQP here).

Failures come out as one of two exceptions, so the consumer can choose: a server
that answered 5xx will never accept this message (``MailRejected``: dead-letter it);
anything else (refused connection, timeout, 4xx) may pass later (``MailUnavailable``:
retry with backoff).
"""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from libs.common.settings import Settings


class MailUnavailable(Exception):
    """The SMTP server could not take the message now; try again later."""


class MailRejected(Exception):
    """The SMTP server refused the message for good (5xx)."""


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def send(self, message: EmailMessage) -> None:
        s = self._settings
        try:
            await aiosmtplib.send(
                message,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_user or None,
                password=s.smtp_password or None,
                start_tls=s.smtp_starttls,
                use_tls=False,
                timeout=s.smtp_timeout_s,
            )
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
            raise MailUnavailable(f"cannot reach SMTP server {s.smtp_host}:{s.smtp_port}: {exc}"[:500]) from exc
