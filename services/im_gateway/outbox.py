"""What domain code may send to XMPP, as plain strings: the component implements it.

Keeping this a Protocol lets routing, commands and the coalescer be tested and read
without slixmpp: they speak of operators and visitors, not stanzas.
"""

from __future__ import annotations

from typing import Protocol


class XmppUnavailable(ConnectionError):
    """The XMPP stream is down: nothing was handed to it (the caller must not ack)."""


class Outbox(Protocol):
    def chat(
        self,
        sender: str,
        to: str,
        body: str,
        *,
        stanza_id: str | None = None,
        request_receipt: bool = False,
        state: str | None = None,
    ) -> None:
        """Hand a chat line to the stream now (XmppUnavailable if it is down).

        request_receipt asks the operator's client for an XEP-0184 receipt (the
        visitor's delivery tick); state adds an XEP-0085 chat state (``active``)."""

    def presence(
        self, sender: str, to: str, *, show: str | None = None, status: str | None = None, kind: str | None = None
    ) -> None:
        """Hand a presence to the stream now; kind is None (available) or a presence type."""

    def chat_state(self, sender: str, to: str, state: str) -> None:
        """XEP-0085 chat state (composing, paused, active) without a body."""

    def receipt(self, sender: str, to: str, stanza_id: str) -> None:
        """XEP-0184 receipt: the operator's line with ``stanza_id`` is committed."""
