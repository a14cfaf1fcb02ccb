"""A new transcript address gets mail only after its link is followed (issue 11)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from libs.common.db import sites, transcript_confirmations
from libs.common.settings import Settings
from tests.console.conftest import PASSWORD, Client, RunningConsole, running_console, text, unique_email
from tests.transcript_worker.conftest import SmtpServer, smtp  # noqa: F401 (the fixture)


@pytest.fixture
async def console_with_mail(
    settings: Settings,
    engine: sa.Engine,
    redis_client: aioredis.Redis,
    smtp: SmtpServer,  # noqa: F811
) -> AsyncIterator[RunningConsole]:
    async with running_console(settings, engine, redis_client, smtp_port=smtp.port, smtp_timeout_s=5.0) as console:
        yield console


def settings_form(transcript_emails: str) -> dict[str, str]:
    return {"name": "Shoe shop", "allowed_domains": "", "transcript_emails": transcript_emails}


def addresses(engine: sa.Engine, site_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(sites.c.transcript_emails).where(sites.c.id == site_id)).scalar_one())


def link_in(smtp: SmtpServer, to: str) -> str:  # noqa: F811
    mail = next(m for m in reversed(smtp.handler.mails) if m["To"] == to)
    match = re.search(r"(/account/confirm/[A-Za-z0-9_-]+)", mail.get_content())
    assert match, mail.get_content()
    return match.group(1)


async def test_a_new_address_is_mailed_only_after_its_link_is_followed(
    console_with_mail: RunningConsole,
    engine: sa.Engine,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    owner = Client(console_with_mail.url)
    email = unique_email()
    site_id = await owner.sign_up(email)
    # Even the owner's own sign-up address waits for its link.
    await smtp.handler.wait_for(lambda: any(m["To"] == email for m in smtp.handler.mails))
    assert addresses(engine, site_id) == []
    stranger = "stranger@elsewhere.example"
    response = await owner.post(
        f"/account/sites/{site_id}", {"name": "Shoe shop", "allowed_domains": "", "transcript_emails": stranger}
    )
    assert response.code == 302
    assert addresses(engine, site_id) == []  # not until the stranger says yes
    page = await owner.get(f"/account/sites/{site_id}")
    assert "Waiting for confirmation" in text(page) and stranger in text(page)
    await smtp.handler.wait_for(lambda: any(m["To"] == stranger for m in smtp.handler.mails))
    link = link_in(smtp, stranger)
    # The recipient, not logged in: GET only asks (mail scanners follow links) ...
    recipient = Client(console_with_mail.url)
    ask = await recipient.get(link)
    assert ask.code == 200 and "Yes, send them to" in text(ask)
    assert addresses(engine, site_id) == []
    # ... the button confirms, once.
    done = await recipient.post(link, {})
    assert done.code == 200 and "Confirmed" in text(done)
    assert addresses(engine, site_id) == [stranger]
    assert (await recipient.post(link, {})).code == 404


async def test_forged_expired_or_withdrawn_links_confirm_nothing(
    console_with_mail: RunningConsole,
    engine: sa.Engine,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    owner = Client(console_with_mail.url)
    site_id = await owner.sign_up(unique_email())
    other = "team@shop.example"
    await owner.post(
        f"/account/sites/{site_id}", {"name": "Shoe shop", "allowed_domains": "", "transcript_emails": other}
    )
    await smtp.handler.wait_for(lambda: any(m["To"] == other for m in smtp.handler.mails))
    link = link_in(smtp, other)
    recipient = Client(console_with_mail.url)
    assert (await recipient.get("/account/confirm/forged-token")).code == 404
    # The owner takes the address out again: its link stops working.
    await owner.post(f"/account/sites/{site_id}", settings_form(""))
    assert (await recipient.post(link, {})).code == 404
    # An expired link (8 days old) confirms nothing either.
    await owner.post(
        f"/account/sites/{site_id}", {"name": "Shoe shop", "allowed_domains": "", "transcript_emails": other}
    )
    await smtp.handler.wait_for(lambda: len([m for m in smtp.handler.mails if m["To"] == other]) == 2)
    with engine.begin() as conn:
        conn.execute(
            transcript_confirmations.update()
            .where(transcript_confirmations.c.site_id == site_id)
            .values(created_at=sa.func.now() - sa.text("INTERVAL 8 DAY"))
        )
    assert (await recipient.post(link_in(smtp, other), {})).code == 404
    assert addresses(engine, site_id) == []


async def test_log_in_still_works_with_a_pending_address(console_with_mail: RunningConsole) -> None:
    email = unique_email()
    await Client(console_with_mail.url).sign_up(email)
    response = await Client(console_with_mail.url).post("/account/login", {"email": email, "password": PASSWORD})
    assert response.code == 302
