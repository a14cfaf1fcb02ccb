"""XEP-0356 (privileged entity): may the gateway write an operator's roster?

After the component handshake each XMPP server host that grants the component
privileges says so in a ``<message><privilege/></message>``. Prosody's mod_privilege
(Debian's prosody-modules, 2023) speaks ``urn:xmpp:privilege:2``; ejabberd 23.01 still
speaks ``urn:xmpp:privilege:1``. Both are read here. slixmpp's own xep_0356 plugin knows
only ``:2`` and keeps the grants in a class attribute shared by every component of the
process (two gateways in one test process would see each other's), so it is not used;
the roster IQs themselves are plain ``jabber:iq:roster`` either way.

A grant is not proof: ejabberd 23.01 advertises roster "both" yet fails every roster
write (ejabberd issue #3942). An operator whose roster write was refused is served by
presence subscriptions for the rest of the stream. Per operator, not per host: Prosody
also refuses a write to an account that does not exist, which says nothing about the
others (a whole host once fell back because one site listed an unregistered JID).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from services.im_gateway.component import GatewayComponent, on

log = logging.getLogger(__name__)

NAMESPACES = ("urn:xmpp:privilege:2", "urn:xmpp:privilege:1")
# How long after the handshake the gateway waits for grants before falling back.
# Prosody and ejabberd send them right after the handshake (measured: a few ms).
ADVERTISE_WAIT_S = 1.0

_GET = ("get", "both")
_SET = ("set", "both")


class Privileges:
    """Roster access per server host, as advertised on this stream and as found to work."""

    def __init__(self, component: GatewayComponent) -> None:
        self._component = component
        self._roster: dict[str, str] = {}  # host -> "none" | "get" | "set" | "both"
        self._broken: dict[str, str] = {}  # operator -> why their roster is not written
        self.advertised = asyncio.Event()
        for ns in NAMESPACES:
            path = f"{{{component.default_ns}}}message/{{{ns}}}privilege"
            component.register_handler(Callback(f"privilege {ns}", MatchXPath(path), self._on_grant))
        on(component, "session_start", self._on_stream)

    def _on_stream(self, _event: Any) -> None:
        # Grants belong to one stream: a reconnect may meet a reconfigured server.
        self._roster.clear()
        self._broken.clear()
        self.advertised.clear()

    def _on_grant(self, msg: Any) -> None:
        host = msg["from"].bare
        if msg["from"].user or not host:
            return  # only a server host grants privileges
        for ns in NAMESPACES:
            element = msg.xml.find(f"{{{ns}}}privilege")
            if element is None:
                continue
            for perm in element.findall(f"{{{ns}}}perm"):
                if perm.get("access") == "roster":
                    self._roster[host] = perm.get("type") or "none"
            log.info("XEP-0356 grant", extra={"host": host, "namespace": ns, "roster": self._roster.get(host, "none")})
        self.advertised.set()

    async def wait(self) -> None:
        """Give the server a moment to announce its grants (none may come)."""
        try:
            await asyncio.wait_for(self.advertised.wait(), ADVERTISE_WAIT_S)
        except TimeoutError:
            log.info("no XEP-0356 grant from the XMPP server: operators get subscription requests instead")

    @staticmethod
    def host_of(jid: str) -> str:
        return jid.split("@", 1)[-1].split("/", 1)[0]

    def can_read(self, operator: str) -> bool:
        return self._roster.get(self.host_of(operator), "none") in _GET

    def can_write(self, operator: str) -> bool:
        return self._roster.get(self.host_of(operator), "none") in _SET and operator not in self._broken

    def broken(self, operator: str, reason: str) -> None:
        if operator not in self._broken:
            log.warning(
                "roster write refused (%s); subscription requests for this operator instead",
                reason,
                extra={"operator": operator},
            )
        self._broken[operator] = reason
