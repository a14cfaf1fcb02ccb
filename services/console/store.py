"""The console's MySQL queries. Every site query takes the owner's account id and
matches on it, so no handler can reach another owner's site by changing an id in a URL.

Synchronous (SQLAlchemy Core); handlers run them in a thread.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from libs.common import chatlines, siteids
from libs.common.db import accounts, conversations, messages, operators, site_store, sites, visitors

# A page of recent conversations: a day's chats on a busy small site; older ones are
# in the transcript emails.
RECENT_CONVERSATIONS = 50


class EmailTaken(ValueError):
    pass


@dataclass(frozen=True)
class ConversationSummary:
    id: str
    visitor: str
    operator: str
    started_at: datetime.datetime
    last_message_at: datetime.datetime
    messages: int
    closed: bool

    @property
    def duration(self) -> str:
        seconds = int((self.last_message_at - self.started_at).total_seconds())
        minutes, seconds = divmod(max(seconds, 0), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


@dataclass(frozen=True)
class TranscriptLine:
    seq: int
    sender: str
    who: str
    body: str
    internal: bool
    sent_at: datetime.datetime
    edited: bool = False  # corrected by its author (XEP-0308): body is the latest text
    action: str | None = None  # "/me waves": shown as "* Alice waves"


class ConsoleStore:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    # --- accounts ----------------------------------------------------------------------
    def sign_up(self, email: str, password_hash: str, site_name: str) -> tuple[int, str]:
        """A new account and its first site, in one transaction; EmailTaken if registered."""
        with self._engine.begin() as conn:
            if conn.execute(sa.select(accounts.c.id).where(accounts.c.email == email)).first():
                raise EmailTaken(email)
            try:
                result = conn.execute(
                    accounts.insert().values(email=email, password_hash=password_hash, created_at=site_store.now())
                )
            except sa.exc.IntegrityError:  # the same address signed up a moment ago
                raise EmailTaken(email) from None
            account_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            # The owner's address too waits for its confirmation link (SignUp sends it):
            # anyone can sign up with anyone's address.
            site = site_store.create_site(conn, account_id, site_name, transcript_emails=[])
        return account_id, site.id

    def credentials(self, email: str) -> tuple[int, str | None] | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(accounts.c.id, accounts.c.password_hash).where(accounts.c.email == email)
            ).first()
        return (int(row.id), row.password_hash) if row else None

    def set_password_hash(self, account_id: int, password_hash: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(accounts.update().where(accounts.c.id == account_id).values(password_hash=password_hash))

    def account_email(self, account_id: int) -> str | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(accounts.c.email).where(accounts.c.id == account_id)).first()
        return str(row.email) if row else None

    # --- sites -------------------------------------------------------------------------
    def sites_of(self, account_id: int) -> list[site_store.Site]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(sites).where(sites.c.account_id == account_id).order_by(sites.c.created_at, sites.c.id)
            ).all()
        return [
            site_store.Site(r.id, r.account_id, r.name, r.theme, r.transcript_emails, r.allowed_domains) for r in rows
        ]

    def owned_site(self, account_id: int, site_id: str) -> site_store.Site | None:
        """The site if ``account_id`` owns it; None for another owner's, unknown or malformed ids."""
        if not siteids.is_site_id(site_id):
            return None
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(sites).where(sites.c.id == site_id, sites.c.account_id == account_id)).first()
        if row is None:
            return None
        return site_store.Site(row.id, row.account_id, row.name, row.theme, row.transcript_emails, row.allowed_domains)

    def create_site(self, account_id: int, name: str, transcript_email: str | None) -> tuple[str, bool]:
        """A new site mailing the owner's address if it is confirmed on another of their
        sites already; returns (site id, whether it was)."""
        with self._engine.begin() as conn:
            lists = conn.execute(sa.select(sites.c.transcript_emails).where(sites.c.account_id == account_id))
            confirmed = bool(transcript_email) and any(transcript_email in (row[0] or []) for row in lists)
            emails = [transcript_email] if confirmed and transcript_email else []
            return site_store.create_site(conn, account_id, name, transcript_emails=emails).id, confirmed

    def _update(self, account_id: int, site_id: str, **values: Any) -> bool:
        with self._engine.begin() as conn:
            result = conn.execute(
                sites.update().where(sites.c.id == site_id, sites.c.account_id == account_id).values(**values)
            )
        # MySQL counts matched rows only when they change; check ownership separately.
        return result.rowcount > 0 or self.owned_site(account_id, site_id) is not None

    def update_settings(
        self, account_id: int, site_id: str, name: str, allowed_domains: list[str], transcript_emails: list[str]
    ) -> bool:
        return self._update(
            account_id, site_id, name=name, allowed_domains=allowed_domains, transcript_emails=transcript_emails
        )

    def save_theme(self, account_id: int, site_id: str, theme: dict[str, dict[str, str]]) -> bool:
        return self._update(account_id, site_id, theme=theme)

    # --- operators (callers have checked ownership) --------------------------------------
    def operators(self, site_id: str) -> list[tuple[str, str]]:
        with self._engine.connect() as conn:
            return site_store.site_operators(conn, site_id)

    def xmpp_domain(self, site_id: str) -> str | None:
        """The site's own component domain (None: its partition of the default one)."""
        with self._engine.connect() as conn:
            return site_store.xmpp_domain_of(conn, site_id)

    def add_operator(self, site_id: str, jid: str, display_name: str) -> None:
        with self._engine.begin() as conn:
            site_store.add_operator(conn, site_id, jid, display_name)

    def remove_operator(self, site_id: str, jid: str) -> None:
        with self._engine.begin() as conn:
            site_store.remove_operator(conn, site_id, jid)

    # --- conversations (callers have checked ownership) ----------------------------------
    def recent_conversations(
        self, site_id: str, limit: int = RECENT_CONVERSATIONS, conversation_id: str | None = None
    ) -> list[ConversationSummary]:
        counts = (
            sa.select(sa.func.count())
            .select_from(messages)
            .where(
                messages.c.conversation_id == conversations.c.id,
                messages.c.internal == sa.false(),
                messages.c.replaces_message_id.is_(None),  # a correction is no new message
            )
            .scalar_subquery()
        )
        query = (
            sa.select(
                conversations,
                visitors.c.name.label("visitor_name"),
                visitors.c.email.label("visitor_email"),
                operators.c.display_name.label("operator_name"),
                counts.label("message_count"),
            )
            .select_from(
                conversations.outerjoin(visitors, visitors.c.id == conversations.c.visitor_id).outerjoin(
                    operators,
                    sa.and_(
                        operators.c.site_id == conversations.c.site_id, operators.c.jid == conversations.c.operator_jid
                    ),
                )
            )
            .where(conversations.c.site_id == site_id)
            .where(conversations.c.id == conversation_id if conversation_id is not None else sa.true())
            .order_by(conversations.c.started_at.desc())
            .limit(limit)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            ConversationSummary(
                id=r.id,
                visitor=_visitor_label(r.visitor_name, r.visitor_email, r.visitor_id),
                operator=r.operator_name or r.operator_jid or "nobody yet",
                started_at=r.started_at,
                last_message_at=r.last_message_at,
                messages=int(r.message_count),
                closed=r.closed_at is not None,
            )
            for r in rows
        ]

    def conversation(self, site_id: str, conversation_id: str) -> ConversationSummary | None:
        found = self.recent_conversations(site_id, limit=1, conversation_id=conversation_id)
        return found[0] if found else None

    def transcript(self, site_id: str, conversation_id: str) -> list[TranscriptLine]:
        names = dict(self.operators(site_id))
        with self._engine.connect() as conn:
            visitor = conn.execute(
                sa.select(visitors.c.name, visitors.c.email, conversations.c.visitor_id)
                .select_from(conversations.outerjoin(visitors, visitors.c.id == conversations.c.visitor_id))
                .where(conversations.c.id == conversation_id, conversations.c.site_id == site_id)
            ).first()
            if visitor is None:
                return []
            rows = conn.execute(
                sa.select(messages)
                .where(messages.c.conversation_id == conversation_id)
                .order_by(messages.c.seq, messages.c.id)
            ).all()
        visitor_label = _visitor_label(visitor.name, visitor.email, visitor.visitor_id)
        lines = []
        folded = chatlines.fold(
            rows,
            message_id=lambda r: str(r.message_id),
            replaces=lambda r: r.replaces_message_id,
            body=lambda r: r.body,
        )
        for shown in folded:
            r = shown.line
            if r.sender == "visitor":
                who = visitor_label
            elif r.sender == "operator":
                who = names.get(r.operator_jid or "", r.operator_jid or "Operator")
            else:
                who = "Habla"
            lines.append(
                TranscriptLine(
                    r.seq,
                    r.sender,
                    who,
                    shown.body,
                    bool(r.internal),
                    r.sent_at,
                    edited=shown.edited,
                    action=chatlines.action(shown.body) if r.sender != "system" else None,
                )
            )
        return lines


def _visitor_label(name: str | None, email: str | None, visitor_id: str) -> str:
    if name and email:
        return f"{name} <{email}>"
    return name or email or f"Visitor {visitor_id[:8]}"
