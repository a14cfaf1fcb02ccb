"""Follow site changes announced on Redis pub/sub and tell connected widgets:
online/offline (the gateway's presence) and theme edits (the console's saves)."""

from __future__ import annotations

import asyncio
import logging

from libs.common import theme
from libs.common.sitedir import SiteDirectory, UnknownSite
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


async def follow_site_config(sites: SiteDirectory, hub: Hub) -> None:
    """A saved theme reaches open widgets at once (runs until cancelled)."""
    while True:
        try:
            async for site_id in sites.changes():
                if not hub.has_site(site_id):
                    continue  # nobody here is looking: no reason to read the site
                try:
                    config = await sites.get(site_id)
                except UnknownSite:
                    continue  # the site was deleted; its widgets get 404s from now on
                merged, _errors = theme.validate(config.theme)
                hub.to_site(site_id, {"type": "theme", "theme": merged})
        except asyncio.CancelledError:
            raise
        except Exception:  # a Redis or MySQL hiccup must not end the follower
            log.exception("site config subscription failed; resubscribing")
        await asyncio.sleep(RESUBSCRIBE_DELAY_S)
