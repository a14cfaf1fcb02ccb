"""name, email, phone, push: details about the visitor, and sending their browser somewhere."""

from __future__ import annotations

import re
import urllib.parse

from libs.common import codec
from services.im_gateway.commands.registry import Call, CommandError, command

# Loose on purpose: operators type what visitors tell them; this catches typos only.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9 ().\-/]{5,30}$")
_MAX_DETAIL = 200  # the visitors table's name column holds 200 characters


async def _record(call: Call, field: str, value: str) -> None:
    assert call.visitor_id is not None
    session = await call.session()
    await call.desk.sessions.save(call.visitor_id, call.site_id, {field: value})
    await call.desk.events.action(
        site_id=call.site_id,
        conversation_id=session.get("conversation_id", ""),
        visitor_id=call.visitor_id,
        operator=call.operator,
        action=field,
        value=value,
    )
    call.reply(f"The {field} of {await call.visitor_name()} is recorded: {value}")


@command("name", "name <name>", "record the visitor's name", needs_visitor=True)
async def name(call: Call) -> None:
    value = " ".join(call.args.split())
    if not value or len(value) > _MAX_DETAIL:
        raise CommandError(f"write the name after the command (at most {_MAX_DETAIL} characters): !name Jane Doe")
    await _record(call, "name", value)


@command("email", "email <address>", "record the visitor's email address", needs_visitor=True)
async def email(call: Call) -> None:
    value = call.args.strip()
    if not _EMAIL.fullmatch(value) or len(value) > 254:
        raise CommandError(f"{value!r} is not an email address: !email jane@example.org")
    await _record(call, "email", value)


@command("phone", "phone <number>", "record the visitor's phone number", needs_visitor=True)
async def phone(call: Call) -> None:
    value = call.args.strip()
    if not _PHONE.fullmatch(value):
        raise CommandError(f"{value!r} is not a phone number: digits, spaces, + ( ) - . / only")
    await _record(call, "phone", value)


@command("push", "push <url>", "send the visitor's browser to a web page", needs_visitor=True)
async def push(call: Call) -> None:
    assert call.visitor_id is not None
    url = call.args.strip()
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or len(url) > 2000:
        raise CommandError(f"{url!r} is not a web address: !push https://example.org/page")
    session = await call.session()
    action = await call.desk.events.action(
        site_id=call.site_id,
        conversation_id=session.get("conversation_id", ""),
        visitor_id=call.visitor_id,
        operator=call.operator,
        action="push",
        value=url,
    )
    await call.desk.events.deliver(
        session.get("frontend_id", ""),
        codec.VisitorDelivery(
            visitor_id=call.visitor_id,
            site_id=call.site_id,
            conversation_id=session.get("conversation_id") or None,
            action=action,
        ),
    )
    call.reply(f"{await call.visitor_name()} is being sent to {url}")
