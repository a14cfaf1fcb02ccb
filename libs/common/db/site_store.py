"""Accounts, sites and operators: the few queries every service and the CLI share."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from libs.common import siteids, theme
from libs.common.db import accounts, operators, sites

# Bare JID: local@domain, no resource; RFC 7622 allows more, but operators are
# ordinary accounts and a stricter shape catches typos early.
_BARE_JID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-+")


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


@dataclass(frozen=True)
class Site:
    id: str
    account_id: int
    name: str
    theme: dict[str, Any]
    transcript_emails: list[str]
    allowed_domains: list[str]


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def normalise_jid(jid: str) -> str:
    """Lower-cased bare JID, or ValueError with what is wrong."""
    jid = jid.strip().lower()
    local, at, domain = jid.partition("@")
    if not at or not local or not domain or "/" in jid:
        raise ValueError(f"{jid!r} is not a bare XMPP address: expected name@server, e.g. alice@example.org")
    if not set(local) <= _BARE_JID_CHARS or not set(domain) <= _BARE_JID_CHARS:
        raise ValueError(f"{jid!r} has characters not allowed in an operator's address")
    return jid


def account_for_email(conn: sa.Connection, email: str) -> int:
    """The id of the account with ``email``, created without a password if missing."""
    email = email.strip().lower()
    row = conn.execute(sa.select(accounts.c.id).where(accounts.c.email == email)).first()
    if row:
        return int(row.id)
    result = conn.execute(accounts.insert().values(email=email, created_at=now()))
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def create_site(
    conn: sa.Connection,
    account_id: int,
    name: str,
    *,
    transcript_emails: list[str] | None = None,
    allowed_domains: list[str] | None = None,
    site_id: str | None = None,
) -> Site:
    site_id = siteids.check_site_id(site_id) if site_id else siteids.new_site_id()
    if conn.execute(sa.select(sites.c.id).where(sites.c.id == site_id)).first():
        raise Conflict(f"site {site_id} already exists")
    values = {
        "id": site_id,
        "account_id": account_id,
        "name": name.strip() or "My site",
        "theme": theme.default_theme(),
        "transcript_emails": transcript_emails or [],
        "allowed_domains": allowed_domains or [],
        "created_at": now(),
    }
    conn.execute(sites.insert().values(**values))
    return get_site(conn, site_id)


def get_site(conn: sa.Connection, site_id: str) -> Site:
    siteids.check_site_id(site_id)
    row = conn.execute(sa.select(sites).where(sites.c.id == site_id)).first()
    if row is None:
        raise NotFound(f"no site {site_id}: check the id (habla site list shows them)")
    return Site(row.id, row.account_id, row.name, row.theme, list(row.transcript_emails), list(row.allowed_domains))


def list_sites(conn: sa.Connection) -> list[Site]:
    rows = conn.execute(sa.select(sites).order_by(sites.c.created_at)).all()
    return [Site(r.id, r.account_id, r.name, r.theme, list(r.transcript_emails), list(r.allowed_domains)) for r in rows]


def add_operator(conn: sa.Connection, site_id: str, jid: str, display_name: str | None = None) -> str:
    get_site(conn, site_id)
    jid = normalise_jid(jid)
    exists = conn.execute(
        sa.select(operators.c.id).where(operators.c.site_id == site_id, operators.c.jid == jid)
    ).first()
    if exists:
        raise Conflict(f"{jid} is already an operator of site {site_id}")
    conn.execute(
        operators.insert().values(
            site_id=site_id,
            jid=jid,
            display_name=(display_name or jid.split("@")[0]).strip()[:100],
            created_at=now(),
        )
    )
    return jid


def remove_operator(conn: sa.Connection, site_id: str, jid: str) -> None:
    jid = normalise_jid(jid)
    result = conn.execute(operators.delete().where(operators.c.site_id == site_id, operators.c.jid == jid))
    if result.rowcount == 0:
        raise NotFound(f"{jid} is not an operator of site {site_id}")


def site_operators(conn: sa.Connection, site_id: str) -> list[tuple[str, str]]:
    """(jid, display name) of every operator of a site."""
    rows = conn.execute(
        sa.select(operators.c.jid, operators.c.display_name)
        .where(operators.c.site_id == site_id)
        .order_by(operators.c.jid)
    ).all()
    return [(r.jid, r.display_name) for r in rows]


def all_operators(conn: sa.Connection) -> dict[str, list[str]]:
    """Every operator JID and the sites it serves (the gateway's start-up load)."""
    result: dict[str, list[str]] = {}
    for row in conn.execute(sa.select(operators.c.jid, operators.c.site_id)).all():
        result.setdefault(row.jid, []).append(row.site_id)
    return result


# A component domain: DNS labels (lower case). At most 190 characters, so that
# "im_gateway.<domain>.conversation.retry.<ms>ms.dead" stays within AMQP's 255.
_DOMAIN = re.compile(r"^(?=.{1,190}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def check_xmpp_domain(domain: str) -> str:
    """``domain`` lower-cased, or ValueError with what a component domain looks like."""
    value = domain.strip().lower()
    if not _DOMAIN.match(value):
        raise ValueError(f"{domain!r} is not a component domain (like chat.example.org, at most 190 characters)")
    return value


def set_xmpp_domain(conn: sa.Connection, site_id: str, domain: str | None) -> None:
    """Move a site to the gateway of ``domain`` (None: the default domain)."""
    get_site(conn, site_id)
    value = check_xmpp_domain(domain) if domain is not None else None
    conn.execute(sa.update(sites).where(sites.c.id == site_id).values(xmpp_domain=value))


def xmpp_domain_of(conn: sa.Connection, site_id: str) -> str | None:
    """The site's own domain (None: the default one); NotFound for an unknown site."""
    row = conn.execute(sa.select(sites.c.xmpp_domain).where(sites.c.id == site_id)).first()
    if row is None:
        raise NotFound(f"no site {site_id}")
    return str(row.xmpp_domain) if row.xmpp_domain else None


def sites_of_xmpp_domain(conn: sa.Connection, domain: str, default_domain: str) -> list[str]:
    """Ids of the sites served by the gateway of ``domain``."""
    served = sites.c.xmpp_domain == domain
    if domain == default_domain:
        served = sa.or_(served, sites.c.xmpp_domain.is_(None))
    return list(conn.execute(sa.select(sites.c.id).where(served).order_by(sites.c.id)).scalars())


def sites_without_xmpp_domain(conn: sa.Connection) -> list[str]:
    """Ids of the sites on the default component domain (spread over its partitions)."""
    return list(conn.execute(sa.select(sites.c.id).where(sites.c.xmpp_domain.is_(None)).order_by(sites.c.id)).scalars())
