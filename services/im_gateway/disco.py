"""What the gateway's JIDs say they can do: XEP-0030 disco#info and XEP-0115 caps.

Clients decide from disco#info whether to ask for receipts, send chat states or offer
"correct last message", so each JID advertises exactly what the gateway handles for
it (services.im_gateway.inbound and relay), no more:

* a visitor (``<name>@<domain>``): receipts both ways (XEP-0184), chat states both
  ways (XEP-0085), corrections of the operator's lines (XEP-0308), software version;
* a site bot (``<site id>@<domain>``): receipts on commands, software version;
* the component domain itself: software version.

Every available presence the gateway sends carries an XEP-0115 ``<c/>`` element
(services.im_gateway.component), so a client learns all this once per kind of JID
from the hash, without a disco round trip per visitor. An operator asking about a
name that is not a current visitor of their sites gets item-not-found (a stale
contact); anyone else gets the same answer for every name, so disco tells strangers
nothing of who is on a site.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.exceptions import XMPPError
from slixmpp.plugins.xep_0030.stanza.info import DiscoInfo
from slixmpp.xmlstream import ET

from libs.common import siteids

if TYPE_CHECKING:
    from services.im_gateway.desk import Desk

log = logging.getLogger(__name__)

DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
CAPS_NS = "http://jabber.org/protocol/caps"
RECEIPTS_NS = "urn:xmpp:receipts"
CHATSTATES_NS = "http://jabber.org/protocol/chatstates"
CORRECTION_NS = "urn:xmpp:message-correct:0"
VERSION_NS = "jabber:iq:version"
# XEP-0115 §4: "a URI that uniquely identifies a software application"; a URN needs
# no host of ours to exist.
CAPS_NODE = "urn:habla:im_gateway"
SOFTWARE_NAME = "Habla"
SOFTWARE_VERSION = "0.1.0"  # pyproject.toml's version


@dataclass(frozen=True)
class Entity:
    """One kind of JID: its identity (category, type, name) and features."""

    category: str
    type: str
    name: str
    features: tuple[str, ...]

    @property
    def ver(self) -> str:
        """The XEP-0115 §5.1 verification string (SHA-1, base64) of this identity and features."""
        text = f"{self.category}/{self.type}//{self.name}<"
        text += "".join(f"{feature}<" for feature in sorted(set(self.features)))
        return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()  # XEP-0115 mandates SHA-1

    def info(self, node: str = "") -> DiscoInfo:
        info = DiscoInfo()
        info.add_identity(self.category, self.type, name=self.name)
        for feature in sorted(set(self.features)):
            info.add_feature(feature)
        if node:
            info["node"] = node
        return info


# client/web: "a client running in a web browser" (XEP-0030 registry): the visitor.
VISITOR = Entity(
    "client",
    "web",
    "Habla visitor",
    (DISCO_INFO_NS, CAPS_NS, RECEIPTS_NS, CHATSTATES_NS, CORRECTION_NS, VERSION_NS),
)
BOT = Entity("client", "bot", "Habla site bot", (DISCO_INFO_NS, CAPS_NS, RECEIPTS_NS, VERSION_NS))
DOMAIN = Entity("component", "generic", "Habla", (DISCO_INFO_NS, VERSION_NS))


def entity_of(local: str) -> Entity:
    """What a JID's local part makes it (before checking that such a visitor exists)."""
    if not local:
        return DOMAIN
    return BOT if siteids.is_site_id(local) else VISITOR


def caps_element(local: str) -> ET.Element:
    """The XEP-0115 ``<c/>`` for an available presence from ``local@<domain>``."""
    entity = entity_of(local)
    return ET.Element(f"{{{CAPS_NS}}}c", {"hash": "sha-1", "node": CAPS_NODE, "ver": entity.ver})


def install(component: Any, desk: Desk) -> None:
    """Answer disco#info for every JID of the component, and jabber:iq:version."""
    component.register_plugin("xep_0030")
    component.register_plugin("xep_0092", {"software_name": SOFTWARE_NAME, "version": SOFTWARE_VERSION, "os": ""})

    async def get_info(jid: JID, node: str | None, ifrom: JID | None, _args: Any) -> DiscoInfo:
        local = jid.user
        entity = entity_of(local)
        wanted = node or ""
        if wanted and wanted != f"{CAPS_NODE}#{entity.ver}":
            raise XMPPError("item-not-found", text="No such node.", etype="cancel")
        asker = ifrom.bare.lower() if ifrom is not None else ""
        if entity is VISITOR and desk.operators.sites_of(asker) and not await _visits(desk, local, asker):
            raise XMPPError("item-not-found", text="No such visitor, or their visit has ended.", etype="cancel")
        return entity.info(wanted)

    # The global handler answers for every JID and node (slixmpp's static per-JID data
    # would need an entry per visitor).
    component.plugin["xep_0030"].api.register(get_info, "get_info")


async def _visits(desk: Desk, name: str, operator: str) -> bool:
    """Is ``name`` a current visitor of one of ``operator``'s sites?

    Only operators are told (item-not-found tells them a contact is stale); anyone
    else gets the same answer for every name, so disco is no way to find out who
    is on a site.
    """
    visitor_id = await desk.names.visitor_of(name)
    session = await desk.sessions.get(visitor_id) if visitor_id else None
    return session is not None and desk.operators.is_operator(operator, session.get("site_id", ""))
