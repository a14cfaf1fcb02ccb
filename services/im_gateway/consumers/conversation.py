"""im_gateway.conversation: closed conversations free their operator's slot."""

from __future__ import annotations

from typing import Any

from libs.common import codec
from services.im_gateway.consumers import Routes, SerialConsumer, Unhandled


class ConversationConsumer(SerialConsumer):
    async def consume(self, type_name: str, struct: Any, routes: Routes | None = None, early: Any = None) -> None:
        if type_name != "ConversationClosed":
            raise Unhandled(f"im_gateway.conversation does not handle {type_name}")
        conversation = await self.desk.routing.close(struct.conversation_id)
        if conversation is None:
            return  # closed here already (!end, !block, visitor ended)
        self.desk.dirty_sites.add(conversation.site_id)
        if struct.reason == codec.CloseReason.IDLE:
            jid = await self.desk.names.jid_of(conversation.visitor_id)
            for operator in conversation.recipients:
                self.desk.info(jid, operator, "This chat was closed after a long silence.")
