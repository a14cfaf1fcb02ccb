"""Consumer of this instance's queue ``rpc_frontend.deliver.<frontend id>``.

Each VisitorDelivery becomes an event for the visitor's connections here. A message
only wakes them (they read the log themselves, from their own cursor), so a delivery
for a visitor who has left, or moved to another instance, is simply dropped.
"""

from __future__ import annotations

import logging
from typing import Any

from libs.common import codec
from libs.common.messaging import Envelope, Permanent
from services.rpc_frontend.hub import Hub

log = logging.getLogger(__name__)

# Operator actions a visitor sees; the rest (name, block, transfer …) concern operators.
VISIBLE_ACTIONS = {"typing", "stopped_typing", "push", "ended", "joined", "received"}


def events_for(delivery: Any) -> list[dict[str, Any]]:
    """What the widget should hear about one delivery (pure: no I/O)."""
    events: list[dict[str, Any]] = []
    if delivery.message is not None:
        events.append({"type": "log", "conversation_id": delivery.conversation_id or delivery.message.conversation_id})
    action = delivery.action
    if action is not None and action.action in VISIBLE_ACTIONS:
        if action.action in ("typing", "stopped_typing"):
            events.append({"type": "typing", "typing": action.action == "typing"})
        elif action.action == "push":
            events.append({"type": "push", "url": action.value or ""})
        elif action.action == "received":
            # The operator's client acknowledged a visitor line: a "receipt" entry in
            # the log, read like any other (so the tick survives reconnects).
            events.append({"type": "log", "conversation_id": action.conversation_id})
        else:
            events.append({"type": action.action, "conversation_id": action.conversation_id})
            events.append({"type": "log", "conversation_id": action.conversation_id})
    status = delivery.site_status
    if status is not None:
        events.append(
            {"type": "status", "online": bool(status.online), "operators_available": status.operators_available}
        )
    return events


class DeliveryConsumer:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def consume(self, envelope: Envelope) -> None:
        if envelope.type_name != "VisitorDelivery":
            raise Permanent(f"expected VisitorDelivery, got {envelope.type_name}")
        delivery = envelope.struct
        assert isinstance(delivery, codec.VisitorDelivery)
        woken = 0
        for event in events_for(delivery):
            woken = self._hub.to_visitor(delivery.visitor_id, event)
        log.debug("delivered", extra={"visitor": delivery.visitor_id, "connections": woken})
