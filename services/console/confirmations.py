"""Transcript addresses are confirmed by a link before any mail goes to them (issue 11).

Only confirmed addresses are in ``sites.transcript_emails``, which is all the transcript
worker reads (transcripts and offline notes), so the worker needs no change and cannot
mail an address nobody confirmed. A new address waits in ``transcript_confirmations``
with a hash of a random token; the link in the mail carries the token; following it
(and pressing the button: mail scanners follow links, they do not submit forms) moves
the address into the site's list. Links expire after a week.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from email.message import EmailMessage

import aiosmtplib
import sqlalchemy as sa

from libs.common.db import site_store, sites, transcript_confirmations
from libs.common.settings import Settings

log = logging.getLogger(__name__)

# A week: long enough for a colleague back from a few days off, short enough that an
# old mail found later confirms nothing.
LINK_TTL = dt.timedelta(days=7)
# Same limit as the form's (services/console/forms.MAX_TRANSCRIPT_EMAILS).
MAX_ADDRESSES = 10


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TranscriptConfirmations:
    def __init__(self, engine: sa.Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    # --- MySQL (blocking: handlers call these off the event loop) ----------------------
    def request(self, site_id: str, email: str) -> str:
        """A fresh token for (site, address); an older pending link for it stops working."""
        token = secrets.token_urlsafe(32)
        with self._engine.begin() as conn:
            conn.execute(
                transcript_confirmations.delete().where(
                    transcript_confirmations.c.site_id == site_id, transcript_confirmations.c.email == email
                )
            )
            conn.execute(
                transcript_confirmations.insert().values(
                    token_sha256=_hash(token), site_id=site_id, email=email, created_at=site_store.now()
                )
            )
        return token

    def pending(self, site_id: str) -> list[str]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(transcript_confirmations.c.email)
                .where(transcript_confirmations.c.site_id == site_id)
                .order_by(transcript_confirmations.c.created_at)
            )
            return [row.email for row in rows]

    def withdraw_except(self, site_id: str, keep: list[str]) -> None:
        """The owner removed an address from the list: its pending link stops working."""
        with self._engine.begin() as conn:
            conn.execute(
                transcript_confirmations.delete().where(
                    transcript_confirmations.c.site_id == site_id, transcript_confirmations.c.email.not_in(keep or [""])
                )
            )

    def lookup(self, token: str) -> tuple[str, str] | None:
        """(site id, address) a live token confirms, without confirming it."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(transcript_confirmations).where(transcript_confirmations.c.token_sha256 == _hash(token))
            ).first()
        if row is None or row.created_at < site_store.now() - LINK_TTL:
            return None
        return row.site_id, row.email

    def confirm(self, token: str) -> tuple[str, str] | None:
        """Move the token's address into its site's transcript list; None if the link is dead."""
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(transcript_confirmations)
                .where(transcript_confirmations.c.token_sha256 == _hash(token))
                .with_for_update()
            ).first()
            if row is None or row.created_at < site_store.now() - LINK_TTL:
                return None
            current = conn.execute(
                sa.select(sites.c.transcript_emails).where(sites.c.id == row.site_id).with_for_update()
            ).scalar_one()
            addresses = list(current or [])
            if row.email not in addresses and len(addresses) < MAX_ADDRESSES:
                conn.execute(
                    sites.update().where(sites.c.id == row.site_id).values(transcript_emails=[*addresses, row.email])
                )
            conn.execute(
                transcript_confirmations.delete().where(transcript_confirmations.c.token_sha256 == row.token_sha256)
            )
        return row.site_id, row.email

    # --- SMTP --------------------------------------------------------------------------
    async def send_link(self, email: str, site_name: str, token: str) -> bool:
        """Mail the confirmation link; False (logged) if the mail server refused or is down."""
        settings = self._settings
        link = f"{settings.console_public_url.rstrip('/')}/account/confirm/{token}"
        message = EmailMessage()
        message["From"] = settings.mail_from
        message["To"] = email
        message["Subject"] = "Confirm: send Habla chat transcripts to this address?"
        message.set_content(
            f'Someone asked for the chat transcripts of the site "{site_name}" to be sent to {email}.\n\n'
            f"If that was you or your team, confirm here (the link works for 7 days):\n\n    {link}\n\n"
            "If not, ignore this mail: nothing will be sent to you.\n"
        )
        try:
            await aiosmtplib.send(
                message,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_user or None,
                password=settings.smtp_password or None,
                start_tls=settings.smtp_starttls,
                timeout=settings.smtp_timeout_s,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("confirmation mail not sent", extra={"to": email, "error": repr(exc)})
            return False
        return True
