"""What the gateway tells the rest of Habla, as domain calls (publishing on RabbitMQ).

Operator lines and actions go to habla.operator for the archive; what the visitor
must see goes to habla.deliver, keyed by the frontend instance holding the visitor.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from libs.common import codec, topology
from libs.common.messaging import Bus


def now_ms() -> int:
    return int(time.time() * 1000)


class Events:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def operator_line(self, message: Any) -> None:
        await self._bus.publish(topology.OPERATOR, f"{message.site_id}.message", message)

    async def action(
        self,
        *,
        site_id: str,
        conversation_id: str,
        visitor_id: str,
        operator: str,
        action: str,
        value: str | None = None,
    ) -> Any:
        struct = codec.OperatorAction(
            action_id=uuid.uuid4().hex,
            conversation_id=conversation_id,
            site_id=site_id,
            visitor_id=visitor_id,
            operator_jid=operator,
            action=action,
            value=value,
            at_ms=now_ms(),
        )
        await self._bus.publish(topology.OPERATOR, f"{site_id}.action", struct)
        return struct

    async def deliver(self, frontend_id: str, delivery: Any) -> None:
        # mandatory=False: a frontend that left has no queue, and the widget resumes
        # from the conversation log wherever it reconnects.
        if frontend_id:
            await self._bus.publish(topology.DELIVER, frontend_id, delivery, mandatory=False)

    async def operator_presence(self, site_id: str, presence: Any) -> None:
        # Nobody need be listening (the archive does not keep presence).
        await self._bus.publish(topology.OPERATOR, f"{site_id}.presence", presence, mandatory=False)

    async def site_status(self, site_id: str, online: bool, operators_available: int) -> None:
        status = codec.SiteStatus(
            site_id=site_id, online=online, operators_available=operators_available, at_ms=now_ms()
        )
        await self._bus.publish(topology.OPERATOR, f"{site_id}.status", status, mandatory=False)
