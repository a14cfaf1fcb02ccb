"""Recent conversations and transcripts, read from the archive tables in MariaDB."""

from __future__ import annotations

import datetime
import uuid

import sqlalchemy as sa

from libs.common.db import conversations, messages, site_store, visitors
from tests.console.conftest import Client, text

T0 = datetime.datetime(2026, 11, 20, 14, 0, 0)


def archive_conversation(
    engine: sa.Engine, site_id: str, lines: list[tuple[str, str, bool]], *, visitor_name: str | None = None
) -> str:
    """Rows as the transcript worker writes them: (sender, body, internal) per line."""
    conversation_id = uuid.uuid4().hex
    visitor_id = uuid.uuid4().hex
    with engine.begin() as conn:
        if visitor_name:
            conn.execute(
                visitors.insert().values(
                    id=visitor_id, site_id=site_id, name=visitor_name, first_seen_at=T0, last_seen_at=T0
                )
            )
        conn.execute(
            conversations.insert().values(
                id=conversation_id,
                site_id=site_id,
                visitor_id=visitor_id,
                operator_jid="ana@example.org",
                started_at=T0,
                last_message_at=T0 + datetime.timedelta(minutes=4, seconds=5),
                last_seq=len(lines),
                closed_at=T0 + datetime.timedelta(minutes=5),
                close_reason="ended",
            )
        )
        for seq, (sender, body, internal) in enumerate(lines, start=1):
            conn.execute(
                messages.insert().values(
                    message_id=uuid.uuid4().hex,
                    conversation_id=conversation_id,
                    seq=seq,
                    sender=sender,
                    operator_jid="ana@example.org" if sender == "operator" else None,
                    body=body,
                    internal=internal,
                    sent_at=T0 + datetime.timedelta(seconds=seq),
                )
            )
    return conversation_id


async def test_recent_conversations_and_a_transcript(client: Client, engine: sa.Engine) -> None:
    site_id = await client.sign_up()
    await client.post(f"/account/sites/{site_id}/operators", {"jid": "ana@example.org", "display_name": "Ana"})
    conversation_id = archive_conversation(
        engine,
        site_id,
        [
            ("visitor", "Do you ship to <b>Norway</b>?", False),
            ("operator", "Yes, in 3 days.", False),
            ("operator", "VIP customer <script>alert(1)</script>", True),
            ("system", "The chat has ended.", False),
        ],
        visitor_name="Kari <kari>",
    )
    listing = text(await client.get(f"/account/sites/{site_id}/conversations"))
    assert "Kari &lt;kari&gt;" in listing and "Ana" in listing
    assert "2026-11-20 14:00" in listing
    assert "3 messages, 4 min 05 s" in listing  # the internal note is not counted
    assert f"/account/sites/{site_id}/conversations/{conversation_id}" in listing

    page = text(await client.get(f"/account/sites/{site_id}/conversations/{conversation_id}"))
    assert "Do you ship to &lt;b&gt;Norway&lt;/b&gt;?" in page and "<b>Norway</b>" not in page
    assert "Yes, in 3 days." in page and "The chat has ended." in page
    assert "VIP customer &lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "(internal note)" in page
    assert page.index("Do you ship") < page.index("Yes, in 3 days.") < page.index("The chat has ended.")


async def test_no_conversations_yet_and_unknown_transcripts(client: Client) -> None:
    site_id = await client.sign_up()
    assert "No conversations yet" in text(await client.get(f"/account/sites/{site_id}/conversations"))
    for conversation_id in (uuid.uuid4().hex, "x" * 300, "%3Cscript%3E"):
        response = await client.get(f"/account/sites/{site_id}/conversations/{conversation_id}")
        assert response.code == 404


def test_visitor_without_a_name_is_labelled_by_id(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        account = site_store.account_for_email(conn, f"{uuid.uuid4().hex[:8]}@shop.example")
        site_id = site_store.create_site(conn, account, "Label").id
    conversation_id = archive_conversation(engine, site_id, [("visitor", "hi", False)])
    from services.console.store import ConsoleStore

    summary = ConsoleStore(engine).conversation(site_id, conversation_id)
    assert summary is not None and summary.visitor.startswith("Visitor ") and summary.operator == "ana@example.org"


async def test_a_corrected_line_and_an_action_in_the_console_transcript(client: Client, engine: sa.Engine) -> None:
    site_id = await client.sign_up()
    await client.post(f"/account/sites/{site_id}/operators", {"jid": "ana@example.org", "display_name": "Ana"})
    conversation_id = archive_conversation(
        engine, site_id, [("visitor", "Shipping?", False), ("operator", "3-5 weeks", False)]
    )
    with engine.begin() as conn:
        first = conn.execute(
            sa.select(messages.c.message_id).where(messages.c.conversation_id == conversation_id, messages.c.seq == 2)
        ).scalar_one()
        for seq, body, replaces in ((3, "3-5 <i>days</i>", first), (4, "/me waves", None)):
            conn.execute(
                messages.insert().values(
                    message_id=uuid.uuid4().hex,
                    conversation_id=conversation_id,
                    seq=seq,
                    sender="operator",
                    operator_jid="ana@example.org",
                    body=body,
                    internal=False,
                    sent_at=T0 + datetime.timedelta(seconds=seq),
                    replaces_message_id=replaces,
                )
            )
    page = text(await client.get(f"/account/sites/{site_id}/conversations/{conversation_id}"))
    assert "3-5 &lt;i&gt;days&lt;/i&gt;" in page and "3-5 weeks" not in page and "(edited)" in page
    assert "* Ana waves" in page and "/me" not in page
    listing = text(await client.get(f"/account/sites/{site_id}/conversations"))
    assert "3 messages" in listing  # the correction is no message of its own
