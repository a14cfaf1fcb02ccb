"""The Mailer's SMTP transaction (MAIL, RCPT per recipient, DATA) against a real SMTP
server (aiosmtpd on a free port): what ``sendmail`` guaranteed still holds. A mail
reaches the recipients the server takes when it refuses some; a refusal of every
recipient is final (5xx) or retried (4xx) and sends no DATA; the SIZE is the mail's
length; a line starting with a dot arrives intact; the bytes arrive as rendered."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from libs.common.settings import Settings
from services.transcript_worker import mime
from services.transcript_worker.mailer import Mailer, MailRejected, MailUnavailable
from services.transcript_worker.rendering import OutgoingMail
from tools import prosody


class _Server:
    """Refuses the RCPT of the addresses in ``refuse`` with their reply; keeps the rest."""

    def __init__(self) -> None:
        self.refuse: dict[str, str] = {}
        self.accepted: list[tuple[list[str], list[str], bytes]] = []  # rcpt, MAIL options, content
        self.data_commands = 0
        self.connections = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_commands += 1
        content = envelope.original_content or b""
        self.accepted.append((list(envelope.rcpt_tos), list(envelope.mail_options), content))
        return "250 OK"


class _Counting(SMTP):
    def connection_made(self, transport: Any) -> None:
        self.event_handler.connections += 1
        super().connection_made(transport)


@pytest.fixture
async def server() -> AsyncIterator[tuple[_Server, Settings]]:
    handler = _Server()
    port = prosody.free_port()
    listening = await asyncio.get_running_loop().create_server(
        lambda: _Counting(handler, hostname="test-smtp"), "127.0.0.1", port
    )
    settings = dataclasses.replace(Settings.from_env(), smtp_host="127.0.0.1", smtp_port=port, smtp_timeout_s=5.0)
    yield handler, settings
    listening.close()
    await listening.wait_closed()


def _mail(n: int, recipients: list[str], body: str = "Hello") -> OutgoingMail:
    data = mime.compose(
        [("Subject", f"Mail {n}"), ("From", "noreply@habla.example"), ("Message-ID", f"<m{n}@habla.example>")],
        body,
        f"<p>{body}</p>",
    )
    return OutgoingMail(f"<m{n}@habla.example>", "noreply@habla.example", recipients, data)


async def test_a_mail_reaches_the_recipients_the_server_takes(server: tuple[_Server, Settings]) -> None:
    handler, settings = server
    handler.refuse["gone@shop.example"] = "550 5.1.1 No such user"
    mailer = Mailer(settings)
    outcomes = await mailer.send_many([_mail(1, ["gone@shop.example", "owner@shop.example"])])
    await mailer.close()
    assert outcomes == [None]  # accepted: the server took it for one recipient
    assert [rcpt for rcpt, _, _ in handler.accepted] == [["owner@shop.example"]]


@pytest.mark.parametrize(
    ("reply", "outcome"), [("550 5.1.1 No such user", MailRejected), ("450 4.2.1 Try later", MailUnavailable)]
)
async def test_every_recipient_refused_sends_no_data(
    server: tuple[_Server, Settings], reply: str, outcome: type[Exception]
) -> None:
    handler, settings = server
    handler.refuse = {"a@shop.example": reply, "b@shop.example": reply}
    mailer = Mailer(settings)
    [result] = await mailer.send_many([_mail(1, ["a@shop.example", "b@shop.example"])])
    # The next mail goes out on a fresh connection (one that saw an error is not reused).
    [after] = await mailer.send_many([_mail(2, ["owner@shop.example"])])
    await mailer.close()
    assert isinstance(result, outcome)
    assert "refused every recipient" in str(result)
    assert after is None
    assert handler.data_commands == 1  # only the second mail's
    assert handler.connections == 2


async def test_the_mail_arrives_as_rendered_with_its_size(server: tuple[_Server, Settings]) -> None:
    handler, settings = server
    # A line that is only a dot would end the DATA early unless stuffed; one starting
    # with a dot would lose it.
    body = "First line\n.\n.hidden? no\n..two dots"
    mails = [_mail(n, ["owner@shop.example"], body) for n in range(6)]
    mailer = Mailer(settings, pool_size=2)
    assert await mailer.send_many(mails) == [None] * 6
    await mailer.close()
    assert handler.connections == 2  # several mails per connection
    assert sorted(content for _, _, content in handler.accepted) == sorted(mail.data for mail in mails)
    for _, options, content in handler.accepted:
        assert [o.upper() for o in options] == [f"SIZE={len(content)}"]
    received = dataclasses.replace(mails[0], data=handler.accepted[0][2]).parsed()
    text = received.get_body(("plain",))
    assert text is not None and text.get_content().replace("\r\n", "\n").startswith(body)
