"""im_gateway.visitor: visitor lines, page views and events → operators over XMPP."""

from __future__ import annotations

import time
from typing import Any

from libs.common import codec
from services.im_gateway import metrics, relay
from services.im_gateway.consumers import SerialConsumer, Unhandled


class VisitorConsumer(SerialConsumer):
    async def consume(self, type_name: str, struct: Any) -> None:
        started = time.perf_counter()
        if type_name == "ChatMessage":
            if struct.sender != codec.SenderKind.VISITOR:
                raise Unhandled("only visitor lines travel on habla.visitor")
            handed = await relay.visitor_line(self.desk, struct)
            metrics.VISITOR_LINES.labels("relayed" if handed else "no_operator").inc()
            metrics.RELAY_SECONDS.labels("visitor").observe(time.perf_counter() - started)
        elif type_name == "PageView":
            # A page view only refreshes a status line: queued in the coalescer (latest
            # wins) and acknowledged; a crash loses at most a superseded status.
            await relay.page_view(self.desk, struct)
        elif type_name == "VisitorEvent":
            await relay.visitor_event(self.desk, struct)
        else:
            raise Unhandled(f"im_gateway.visitor does not handle {type_name}")
