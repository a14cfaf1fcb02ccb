"""Transcript and offline-message emails: plain text + HTML (no AMQP, no SMTP here).

HTML goes through Jinja2 with autoescaping, so whatever a visitor or operator typed
shows as text. Headers are built with ``email.message.EmailMessage`` (policy default),
which refuses CR/LF in any header value; on top of that every piece of user text that
reaches a header (names in the Subject, Reply-To) is sanitised first: control
characters removed, whitespace collapsed, length capped.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any

import jinja2

from libs.common import chatlines, theme
from libs.common.sitedir import SiteConfig

TEMPLATES = Path(__file__).parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    # HTML templates escape every value; the plain-text ones must not (no entities in text mail).
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=True),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    # Templates ship with the code: no stat() per render to look for edits.
    auto_reload=False,
)

# Longest header phrase built from user text: RFC 5322 recommends lines under 78
# characters; a name of 60 leaves room for "Chat with … on <site>" to fold cleanly.
HEADER_TEXT_MAX = 60
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_ID_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# A conservative address shape for Reply-To: the frontend validated it already; this
# is defence in depth against anything that arrives by another route.
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")

_REASONS = {1: "ended by the operator", 2: "ended by the visitor", 3: "closed after inactivity", 4: "visitor blocked"}


def header_text(value: str | None, limit: int = HEADER_TEXT_MAX) -> str:
    """User text made safe for a header phrase: one line, no control characters."""
    text = " ".join(_CONTROL.sub(" ", value or "").split())
    return text[: limit - 1] + "…" if len(text) > limit else text


def safe_address(address: str | None, display_name: str | None = None) -> Address | None:
    """An Address for a header, or None if ``address`` is not a plain mailbox."""
    if not address or not _ADDRESS.fullmatch(address) or len(address) > 254:
        return None
    local, _, domain = address.rpartition("@")
    try:
        return Address(display_name=header_text(display_name), username=local, domain=domain)
    except (ValueError, IndexError):
        return None


def message_id(kind: str, key: str, mail_from: str) -> str:
    """A Message-ID derived from the conversation (or note), so a repeat is recognisable."""
    token = key if _ID_SAFE.fullmatch(key) else hashlib.sha256(key.encode()).hexdigest()[:32]
    domain = parseaddr(mail_from)[1].rpartition("@")[2] or "habla.localhost"
    return f"<{kind}.{token}@{domain}>"


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _colours(site: SiteConfig) -> dict[str, str]:
    # Only validated #rrggbb colours reach the style attributes.
    merged, _errors = theme.validate(site.theme or {})
    return merged["colours"]


def transcript_context(transcript: Any, site: SiteConfig) -> dict[str, Any]:
    names = dict(site.operators)
    visitor_label = transcript.visitor_name or "Visitor"
    lines = []
    # Corrections (XEP-0308) edit the line they name: one line, its latest text.
    folded = chatlines.fold(
        transcript.messages,
        message_id=lambda m: str(m.message_id),
        replaces=lambda m: m.replaces_message_id,
        body=lambda m: str(m.body),
    )
    for shown in folded:
        m = shown.line
        if m.internal:
            who = m.operator_name or names.get(m.operator_jid or "") or m.operator_jid or "Operator"
        elif int(m.sender) == 1:
            who = visitor_label
        elif int(m.sender) == 2:
            who = m.operator_name or names.get(m.operator_jid or "") or m.operator_jid or "Operator"
        else:
            who = "Habla"
        lines.append(
            {
                "when": _when(m.sent_at_ms),
                "who": who,
                "body": shown.body,
                "action": chatlines.action(shown.body),  # "/me waves" → "* Alice waves"
                "edited": shown.edited,
                "internal": bool(m.internal),
                "kind": {1: "visitor", 2: "operator"}.get(int(m.sender), "system"),
            }
        )
    return {
        "site_name": transcript.site_name or site.name,
        "visitor": {
            "name": transcript.visitor_name,
            "email": transcript.visitor_email,
            "phone": transcript.visitor_phone,
            "referrer": transcript.referrer,
        },
        "pages": [{"url": p.url, "title": p.title, "when": _when(p.viewed_at_ms)} for p in transcript.pages or []],
        "operators": [f"{names.get(j, j)} <{j}>" if names.get(j) else j for j in transcript.operator_jids or []],
        "lines": lines,
        "started": _when(transcript.started_at_ms),
        "closed": _when(transcript.closed_at_ms),
        "reason": _REASONS.get(int(transcript.reason), "closed"),
        "colours": _colours(site),
        "conversation_id": transcript.conversation_id,
    }


def transcript_email(transcript: Any, site: SiteConfig, mail_from: str) -> EmailMessage:
    context = transcript_context(transcript, site)
    who = header_text(transcript.visitor_name) or "a visitor"
    subject = f"Chat with {who} on {header_text(context['site_name'])}"
    message = _message(
        subject,
        mail_from,
        site.transcript_emails,
        message_id("transcript", transcript.conversation_id, mail_from),
        _env.get_template("transcript.txt").render(context),
        _env.get_template("transcript.html").render(context),
    )
    visitor = safe_address(transcript.visitor_email, transcript.visitor_name)
    if visitor is not None:
        message["Reply-To"] = visitor
    return message


def offline_email(note: Any, site: SiteConfig, mail_from: str) -> EmailMessage:
    name = header_text(note.name) or "A visitor"
    context = {
        "site_name": site.name,
        "name": note.name,
        "email": note.email,
        "body": note.body,
        "page_url": note.page_url,
        "when": _when(note.sent_at_ms),
        "colours": _colours(site),
    }
    message = _message(
        f"{name} wrote you a note on {header_text(site.name)}",
        mail_from,
        site.transcript_emails,
        message_id("offline", note.message_id, mail_from),
        _env.get_template("offline.txt").render(context),
        _env.get_template("offline.html").render(context),
    )
    reply_to = safe_address(note.email, note.name)
    if reply_to is not None:
        message["Reply-To"] = reply_to
    return message


def recipients(addresses: list[str]) -> list[str]:
    """The site's transcript addresses that are plain mailboxes."""
    return [a for a in addresses if safe_address(a) is not None]


def _message(subject: str, mail_from: str, to: list[str], msg_id: str, text: str, html: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = mail_from
    message["To"] = ", ".join(recipients(to))
    message["Date"] = format_datetime(datetime.datetime.now(datetime.UTC))
    message["Message-ID"] = msg_id
    # RFC 3834: machine-generated, so auto-responders do not answer it.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message
