"""A real operator: a slixmpp ClientXMPP logged in to the test server, recording what it gets.

It behaves like the strictest real client (see ../shared/notes/servers.md): presence
counts only from roster contacts the operator is subscribed to, and a subscription
request is a prompt that waits for the person (``approve``) — never answered by the
client itself. slixmpp's ``auto_authorize = False`` would decline every request at
once, which no real client does; ``None`` leaves it pending, as a client whose user
has not looked yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slixmpp import ClientXMPP

# How long the gateway tests' helpers wait for something before they fail: a deadline
# for an event, not a promise of speed, generous so a loaded machine (five test runs on
# two cores) does not fail a test that works. Only a failing test waits it out.
DEADLINE_S = 30.0


@dataclass
class Received:
    kind: str  # "message" | "presence"
    sender: str  # full JID
    body: str
    status: str
    ptype: str  # presence type attribute ("" = available)
    show: str
    stanza_id: str
    at: float
    error: str = ""


class OperatorClient:
    def __init__(self, jid: str, password: str, host: str, port: int, resource: str | None = None) -> None:
        self.jid = jid
        self.password = password
        full = f"{jid}/{resource}" if resource else jid
        self.xmpp = ClientXMPP(full, password, plugin_config={"feature_mechanisms": {"unencrypted_plain": True}})
        self.xmpp.enable_starttls = False
        self.xmpp.enable_direct_tls = False
        self.xmpp.enable_plaintext = True
        self.xmpp.auto_authorize = None  # a prompt waits for the person (see above)
        self.xmpp.auto_subscribe = False
        self.xmpp.register_plugin("xep_0085")
        self.xmpp.register_plugin("xep_0184", {"auto_ack": False, "auto_request": False})
        self.xmpp.add_event_handler("receipt_received", self._on_receipt)
        self.xmpp.add_event_handler("chatstate", self._on_chat_state)
        self.chat_states: list[tuple[str, str]] = []  # (sender bare JID, state)
        self._host, self._port = host, port
        self.received: list[Received] = []
        self.receipts: set[str] = set()  # stanza ids the gateway acknowledged (XEP-0184)
        self._changed = asyncio.Event()
        self._online = asyncio.Event()
        self.xmpp.add_event_handler("session_start", self._on_start)
        self.xmpp.add_event_handler("message", self._on_message)
        self.xmpp.add_event_handler("message_error", self._on_message)
        self.xmpp.add_event_handler("presence", self._on_presence)
        self.xmpp.add_event_handler("roster_update", lambda _iq: self._changed.set())
        self.ignored: list[str] = []  # presence senders ignored: not subscribed contacts

    async def start(self, show: str | None = None) -> OperatorClient:
        self.xmpp.connect(self._host, self._port)
        self._show = show
        await asyncio.wait_for(self._online.wait(), 15)
        return self

    async def _on_start(self, _event: Any) -> None:
        # The roster first, as RFC 6121 (2.2) asks and real clients do: initial presence
        # makes the server probe every contact, and an answer that came before the roster
        # was ignored as a stranger's (test_stale_contact_is_answered_then_removed, under
        # load: the gateway's "visit ended" beat the roster result).
        await self.xmpp.get_roster()
        self.xmpp.send_presence(pshow=self._show)
        self._online.set()

    def _record(self, item: Received) -> None:
        self.received.append(item)
        self._changed.set()

    def _on_receipt(self, msg: Any) -> None:
        self.receipts.add(msg["receipt"])
        self._changed.set()

    def _on_chat_state(self, msg: Any) -> None:
        self.chat_states.append((msg["from"].bare, msg["chat_state"]))
        self._changed.set()

    def _on_message(self, msg: Any) -> None:
        error = msg["error"]["condition"] if msg["type"] == "error" else ""
        self._record(
            Received("message", str(msg["from"]), msg["body"], "", msg["type"], "", msg["id"], time.monotonic(), error)
        )

    def subscribed_to(self, jid: str) -> bool:
        """Whether the roster holds ``jid`` with its presence ("to" or "both")."""
        roster = self.xmpp.client_roster
        return jid in roster and roster[jid]["subscription"] in ("to", "both")

    def roster_item(self, jid: str) -> dict[str, Any] | None:
        """``jid``'s roster entry as the server pushed it (None if not in the roster)."""
        roster = self.xmpp.client_roster
        if jid not in roster or roster[jid]["subscription"] not in ("to", "from", "both"):
            return None
        item = roster[jid]
        return {"name": item["name"], "groups": list(item["groups"]), "subscription": item["subscription"]}

    async def wait_roster(self, predicate: Callable[[], bool], within: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.jid}: roster condition not met within {within} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))

    def approve(self, jid: str) -> None:
        """What the person does with a prompt: accept it and ask back."""
        self.xmpp.send_presence(pto=jid, ptype="subscribed")
        self.xmpp.send_presence(pto=jid, ptype="subscribe")

    def _on_presence(self, pres: Any) -> None:
        ptype = pres.xml.get("type") or ""
        sender = pres["from"].bare
        if ptype in ("", "unavailable", "probe") and not self.subscribed_to(sender):
            # Real clients show presence only for contacts in their roster.
            self.ignored.append(sender)
            return
        error = pres["error"]["condition"] if ptype == "error" else ""
        self._record(
            Received(
                "presence",
                str(pres["from"]),
                "",
                pres["status"],
                pres.xml.get("type") or "",
                pres["show"],
                pres["id"],
                time.monotonic(),
                error,
            )
        )

    async def wait_for(self, predicate: Callable[[Received], bool], within: float = DEADLINE_S) -> Received:
        """The first received stanza matching ``predicate`` (already there or arriving)."""
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for item in self.received[seen:]:
                if predicate(item):
                    return item
            seen = len(self.received)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.jid}: nothing matched within {within} s; got {self.received[-5:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def messages_from(self, bare: str) -> list[Received]:
        return [r for r in self.received if r.kind == "message" and r.sender.split("/")[0] == bare and r.body]

    def say(self, to: str, body: str, stanza_id: str | None = None, receipt: bool = False) -> None:
        msg = self.xmpp.make_message(mto=to, mbody=body, mtype="chat")
        if stanza_id:
            msg["id"] = stanza_id
        if receipt:
            msg.xml.append(msg.xml.makeelement("{urn:xmpp:receipts}request", {}))
        msg.send()

    async def ask(self, to: str, body: str, within: float = DEADLINE_S) -> str:
        """Send a command and return the reply from ``to``."""
        mark = len(self.received)
        self.say(to, body)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for item in self.received[mark:]:
                if item.kind == "message" and item.sender.split("/")[0] == to and (item.body or item.error):
                    return item.body or f"error:{item.error}"
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.01, deadline - time.monotonic()))
        raise TimeoutError(f"no answer from {to} to {body!r}")

    async def stop(self) -> None:
        self.xmpp.disconnect(wait=0.5)
        try:
            await asyncio.wait_for(self.xmpp.disconnected, 3)
        except (TimeoutError, asyncio.CancelledError):
            self.xmpp.abort()
