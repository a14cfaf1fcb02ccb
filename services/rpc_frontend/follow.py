"""Follow site changes announced on Redis pub/sub: keep the in-memory site copies right
(``sitecache``) and tell connected widgets: online/offline (the gateway's presence)
and theme edits (the console's saves).

One subscription to both channels. The copies are used only while it is confirmed:
from the moment it breaks until the next one is confirmed, requests read Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from libs.common.sitedir import UnknownSite
from libs.common.state.presence import SiteState, site_status_channel
from services.rpc_frontend.context import Frontend

log = logging.getLogger(__name__)

# Wait before re-subscribing after Redis dropped us: quick enough that a widget
# misses at most a second of changes (it re-reads the status on reconnect anyway).
RESUBSCRIBE_DELAY_S = 1.0


async def follow_sites(frontend: Frontend) -> None:
    """Runs until cancelled."""
    pushes: set[asyncio.Task[None]] = set()
    while True:
        try:
            await _follow(frontend, pushes)
        except asyncio.CancelledError:
            for push in pushes:
                push.cancel()
            raise
        except Exception:  # a Redis hiccup must not end the follower
            log.exception("site change subscription failed; resubscribing")
        finally:
            frontend.sitecache.following(False)
        await asyncio.sleep(RESUBSCRIBE_DELAY_S)


async def _follow(frontend: Frontend, pushes: set[asyncio.Task[None]]) -> None:
    status_channel, config_channel = site_status_channel(frontend.settings), frontend.sites.channel
    pubsub = frontend.redis.pubsub()
    try:
        await pubsub.subscribe(status_channel, config_channel)
        confirmed: set[str] = set()
        async for message in pubsub.listen():
            kind, channel = message["type"], str(message["channel"])
            if kind == "subscribe":
                # Redis has registered us: from here on no announcement is missed.
                confirmed.add(channel)
                if confirmed == {status_channel, config_channel}:
                    frontend.sitecache.following(True)
            elif kind == "message" and channel == status_channel:
                _status_changed(frontend, message["data"])
            elif kind == "message" and channel == config_channel:
                site_id = str(message["data"])
                frontend.sitecache.config_changed(site_id)
                if frontend.hub.has_site(site_id):  # nobody here is looking: no reason to read it
                    # A task: a slow MySQL read must not hold up the status announcements.
                    push = asyncio.create_task(_push_theme(frontend, site_id))
                    pushes.add(push)
                    push.add_done_callback(pushes.discard)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


def _status_changed(frontend: Frontend, data: Any) -> None:
    try:
        parsed = json.loads(data)
        state = SiteState(str(parsed["site_id"]), bool(parsed["online"]), int(parsed["operators_available"]))
    except (ValueError, TypeError, KeyError):
        # Not one of ours; whatever site it meant, its copy may be stale now.
        log.warning("unreadable site status announcement; dropping every copy", extra={"data": repr(data)[:200]})
        frontend.sitecache.forget()
        return
    frontend.sitecache.state_changed(state)
    frontend.hub.to_site(
        state.site_id, {"type": "status", "online": state.online, "operators_available": state.operators_available}
    )


async def _push_theme(frontend: Frontend, site_id: str) -> None:
    """A saved theme reaches open widgets at once."""
    try:
        config = await frontend.sitecache.config(site_id)
    except UnknownSite:
        return  # the site was deleted; its widgets get 404s from now on
    except Exception:  # a Redis or MySQL hiccup: the widgets get the theme on their next boot
        log.warning("could not read a changed site's config", extra={"site": site_id}, exc_info=True)
        return
    frontend.hub.to_site(site_id, {"type": "theme", "theme": frontend.sitecache.theme(config)})
