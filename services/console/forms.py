"""Validation of what site owners type: each function returns the cleaned value or a
sentence saying what is wrong, shown next to the field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from libs.common.db import site_store

# Deliberately loose (one @, a dot in the domain, no spaces): the authority on an
# address is the mail server; this catches typos, not every RFC 5322 corner.
EMAIL_RE = re.compile(r"[^@\s<>\"']+@[^@\s<>\"']+\.[^@\s<>\"']+")  # fullmatch: no trailing newline
# RFC 5321: 254 characters is the longest usable address (also the accounts column).
EMAIL_MAX = 254
# NIST SP 800-63B: at least 8 characters; the upper bound keeps argon2 from being
# handed megabytes to hash (a cheap denial of service).
PASSWORD_MIN = 8
PASSWORD_MAX = 256
# sites.name is VARCHAR(200).
SITE_NAME_MAX = 200
# A host name: dot-separated labels of letters, digits and inner hyphens (RFC 1123),
# each at most 63 characters, 253 in all; an optional :port for development hosts.
HOST_RE = re.compile(
    r"^(?=.{1,253}(?::\d{1,5})?$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
    r"(?::\d{1,5})?$"
)
# Enough for a shop's www/non-www/staging hosts and a team's inboxes; more is a typo
# (or abuse: every widget load checks the list).
MAX_DOMAINS = 20
MAX_TRANSCRIPT_EMAILS = 10
# operators.display_name is VARCHAR(100).
DISPLAY_NAME_MAX = 100


@dataclass
class Form:
    """Submitted values (to show them again) and errors by field name."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def email(text: str) -> tuple[str, str | None]:
    value = text.strip().lower()
    if not value:
        return value, "Enter your email address."
    if len(value) > EMAIL_MAX:
        return value, f"An email address has at most {EMAIL_MAX} characters."
    if not EMAIL_RE.fullmatch(value):
        return value, "Enter an email address like you@example.com."
    return value, None


def password(text: str) -> str | None:
    if len(text) < PASSWORD_MIN:
        return f"Use at least {PASSWORD_MIN} characters."
    if len(text) > PASSWORD_MAX:
        return f"Use at most {PASSWORD_MAX} characters."
    return None


def site_name(text: str) -> tuple[str, str | None]:
    value = " ".join(text.split())
    if not value:
        return value, "Give the site a name, e.g. Shoe shop."
    if len(value) > SITE_NAME_MAX:
        return value, f"A site name has at most {SITE_NAME_MAX} characters."
    return value, None


def _lines(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[\s,]+", text) if part.strip()]


def domains(text: str) -> tuple[list[str], str | None]:
    """Host names, one per line (or comma-separated); empty means any site may embed."""
    hosts: list[str] = []
    for raw in _lines(text.lower()):
        if raw.startswith(("http://", "https://")) or "/" in raw:
            return hosts, f"{raw!r}: enter only the host name, like shop.example (no http:// and no path)."
        if not HOST_RE.match(raw):
            return hosts, f"{raw!r} is not a host name: use letters, digits, dots and hyphens, like shop.example."
        if raw not in hosts:
            hosts.append(raw)
    if len(hosts) > MAX_DOMAINS:
        return hosts, f"At most {MAX_DOMAINS} domains."
    return hosts, None


def transcript_emails(text: str) -> tuple[list[str], str | None]:
    addresses: list[str] = []
    for raw in _lines(text):
        value, error = email(raw)
        if error:
            return addresses, f"{raw!r}: {error}"
        if value not in addresses:
            addresses.append(value)
    if len(addresses) > MAX_TRANSCRIPT_EMAILS:
        return addresses, f"At most {MAX_TRANSCRIPT_EMAILS} addresses."
    return addresses, None


def operator_jid(text: str) -> tuple[str, str | None]:
    if not text.strip():
        return "", "Enter the operator's XMPP address, e.g. alice@example.org."
    try:
        return site_store.normalise_jid(text), None
    except ValueError as exc:
        return text.strip(), f"{str(exc)[0].upper()}{str(exc)[1:]}."


def display_name(text: str, jid: str) -> tuple[str, str | None]:
    value = " ".join(text.split()) or jid.split("@")[0]
    if len(value) > DISPLAY_NAME_MAX:
        return value, f"A display name has at most {DISPLAY_NAME_MAX} characters."
    return value, None
