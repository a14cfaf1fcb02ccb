"""Transcript and offline-message emails: plain text + HTML (no AMQP, no SMTP here).

HTML goes through Jinja2 with autoescaping, so whatever a visitor or operator typed
shows as text. The templates are compiled once per process (the environment caches
them and never looks for edits). Every piece of user text that reaches a header (names
in the Subject, Reply-To) is sanitised first: control characters removed, whitespace
collapsed, length capped; on top of that ``mime.compose`` refuses CR/LF in any header
value. The result is the mail's wire bytes (``OutgoingMail``), ready for SMTP.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import Any

import jinja2

from libs.common import chatlines, theme
from libs.common.sitedir import SiteConfig
from services.transcript_worker import mime

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
# Compiled once, at import.
_TRANSCRIPT_TXT = _env.get_template("transcript.txt")
_TRANSCRIPT_HTML = _env.get_template("transcript.html")
_OFFLINE_TXT = _env.get_template("offline.txt")
_OFFLINE_HTML = _env.get_template("offline.html")

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
    return f"<{kind}.{token}@{_domain(mail_from)}>"


@functools.lru_cache(maxsize=8)
def _domain(mail_from: str) -> str:
    return parseaddr(mail_from)[1].rpartition("@")[2] or "habla.localhost"


@functools.lru_cache(maxsize=4096)
def _minute(minute: int) -> str:
    return datetime.datetime.fromtimestamp(minute * 60, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _when(ms: int) -> str:
    # Shown to the minute: a chat's lines share a handful of minutes, so cached.
    return _minute(ms // 60_000)


def _colours(site: SiteConfig) -> dict[str, str]:
    # Only validated #rrggbb colours reach the style attributes.
    return _validated_colours(json.dumps(site.theme or {}, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _validated_colours(theme_json: str) -> dict[str, str]:
    # Validating a theme costs more than rendering a short mail; sites share few themes.
    merged, _errors = theme.validate(json.loads(theme_json))
    return dict(merged["colours"])


@dataclass(slots=True)
class Line:
    """One line as the templates show it (attributes, not dict keys: Jinja2 looks an
    attribute up first, and a dict's failed attribute lookup costs an exception)."""

    when: str
    who: str
    body: str
    action: str | None  # "/me waves" → "waves", shown "* Alice waves"
    edited: bool
    internal: bool
    kind: str  # visitor, operator or system
    bubble: str  # background and text colour of the line's bubble (validated colours)
    ink: str


def transcript_context(transcript: Any, site: SiteConfig) -> dict[str, Any]:
    names = dict(site.operators)
    visitor_label = transcript.visitor_name or "Visitor"
    colours = _colours(site)
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
        sender = int(m.sender)
        if m.internal or sender == 2:
            who = m.operator_name or names.get(m.operator_jid or "") or m.operator_jid or "Operator"
        elif sender == 1:
            who = visitor_label
        else:
            who = "Habla"
        kind = {1: "visitor", 2: "operator"}.get(sender, "system")
        lines.append(
            Line(
                when=_when(m.sent_at_ms),
                who=who,
                body=shown.body,
                action=chatlines.action(shown.body),
                edited=shown.edited,
                internal=bool(m.internal),
                kind=kind,
                bubble=colours["visitor_bubble" if kind == "visitor" else "operator_bubble"],
                ink=colours["visitor_text" if kind == "visitor" else "operator_text"],
            )
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
        "colours": colours,
        "conversation_id": transcript.conversation_id,
    }


@dataclass(frozen=True)
class OutgoingMail:
    """One rendered email: its wire bytes and the SMTP envelope."""

    message_id: str
    sender: str  # envelope sender (MAIL FROM): the address of HABLA_MAIL_FROM
    recipients: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        """The mail as a mail client reads it (for tests and debugging)."""
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


def transcript_email(transcript: Any, site: SiteConfig, mail_from: str) -> OutgoingMail:
    context = transcript_context(transcript, site)
    who = header_text(transcript.visitor_name) or "a visitor"
    subject = f"Chat with {who} on {header_text(context['site_name'])}"
    return _message(
        subject,
        mail_from,
        site.transcript_emails,
        message_id("transcript", transcript.conversation_id, mail_from),
        _TRANSCRIPT_TXT.render(context),
        _TRANSCRIPT_HTML.render(context),
        safe_address(transcript.visitor_email, transcript.visitor_name),
    )


def offline_email(note: Any, site: SiteConfig, mail_from: str) -> OutgoingMail:
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
    return _message(
        f"{name} wrote you a note on {header_text(site.name)}",
        mail_from,
        site.transcript_emails,
        message_id("offline", note.message_id, mail_from),
        _OFFLINE_TXT.render(context),
        _OFFLINE_HTML.render(context),
        safe_address(note.email, note.name),
    )


def recipients(addresses: list[str]) -> list[str]:
    """The site's transcript addresses that are plain mailboxes."""
    return [a for a in addresses if safe_address(a) is not None]


@functools.lru_cache(maxsize=8)
def _from(mail_from: str) -> tuple[str, str]:
    """HABLA_MAIL_FROM as a From header value, and its address (the envelope sender)."""
    name, address = parseaddr(mail_from)
    return mime.header_value("From", formataddr((name, address), charset="utf-8")), address


def _message(
    subject: str, mail_from: str, to: list[str], msg_id: str, text: str, html: str, reply_to: Address | None
) -> OutgoingMail:
    from_header, sender = _from(mail_from)
    rcpt = recipients(to)
    headers = [
        ("Subject", mime.header_value("Subject", subject)),
        ("From", from_header),
        ("To", mime.header_value("To", ", ".join(rcpt))),
        ("Date", format_datetime(datetime.datetime.now(datetime.UTC))),
        ("Message-ID", msg_id),
        # RFC 3834: machine-generated, so auto-responders do not answer it.
        ("Auto-Submitted", "auto-generated"),
    ]
    if reply_to is not None:
        # safe_address checked the mailbox; formataddr quotes or encodes the name.
        value = formataddr((reply_to.display_name, reply_to.addr_spec), charset="utf-8")
        headers.append(("Reply-To", mime.header_value("Reply-To", value)))
    return OutgoingMail(msg_id, sender, rcpt, mime.compose(headers, text, html))
