"""im_gateway.visitor: visitor lines, page views and events → operators over XMPP."""

from __future__ import annotations

import time
from typing import Any

from libs.common import codec
from libs.common.messaging import Envelope
from services.im_gateway import metrics, relay
from services.im_gateway.consumers import Routes, SerialConsumer, Unhandled


class VisitorConsumer(SerialConsumer):
    def lookups(self, type_name: str, struct: Any) -> tuple[str, str, str]:
        if type_name == "ChatMessage" and struct.conversation_id:
            return struct.conversation_id, struct.site_id, struct.visitor_id
        return "", "", ""

    def queue_early(self, pipe: Any, envelope: Envelope) -> bool:
        # A page view's Redis work (record the page, read followers and the chat) goes
        # with the batch's reads: one round trip per page view instead of two.
        if envelope.type_name != "PageView":
            return False
        relay.queue_page_view(self.desk, pipe, envelope.struct, envelope.message_id)
        return True

    async def consume(self, type_name: str, struct: Any, routes: Routes | None = None, early: Any = None) -> None:
        started = time.perf_counter()
        if type_name == "ChatMessage":
            if struct.sender != codec.SenderKind.VISITOR:
                raise Unhandled("only visitor lines travel on habla.visitor")
            # A conversation read with the batch is used as read; one that did not exist
            # yet is read again (an earlier line of the batch may have routed it).
            route = routes.get(struct.conversation_id) if routes else None
            handed = await relay.visitor_line(self.desk, struct, route if route and route[0] else None)
            metrics.VISITOR_LINES.labels("relayed" if handed else "no_operator").inc()
            metrics.RELAY_SECONDS.labels("visitor").observe(time.perf_counter() - started)
        elif type_name == "PageView":
            # A page view only refreshes a status line: queued in the coalescer (latest
            # wins) and acknowledged; a crash loses at most a superseded status.
            await relay.page_view(self.desk, struct, early)
        elif type_name == "VisitorEvent":
            await relay.visitor_event(self.desk, struct)
        else:
            raise Unhandled(f"im_gateway.visitor does not handle {type_name}")
