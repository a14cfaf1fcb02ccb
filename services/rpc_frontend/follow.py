"""Follow site online/offline changes (Redis pub/sub) and tell connected widgets."""

from __future__ import annotations

import asyncio
import logging

from libs.common.state.presence import SiteStatusReader
from services.rpc_frontend.hub import Hub

log = logging.getLogger(__name__)

# Wait before re-subscribing after Redis dropped us: quick enough that a widget
# misses at most a second of changes (it re-reads the status on reconnect anyway).
RESUBSCRIBE_DELAY_S = 1.0


async def follow_site_status(status: SiteStatusReader, hub: Hub) -> None:
    """Runs until cancelled."""
    while True:
        try:
            async for state in status.changes():
                hub.to_site(
                    state.site_id,
                    {"type": "status", "online": state.online, "operators_available": state.operators_available},
                )
        except asyncio.CancelledError:
            raise
        except Exception:  # a Redis hiccup must not end the follower
            log.exception("site status subscription failed; resubscribing")
        await asyncio.sleep(RESUBSCRIBE_DELAY_S)
