"""SiteDirectory changes add and remove operators: the bot joins or leaves their roster."""

from __future__ import annotations

import asyncio
import uuid

from libs.common.db import site_store
from libs.common.sitedir import SiteDirectory
from tests.im_gateway.conftest import Site, connect_operator


async def test_added_operator_is_subscribed_and_removed_one_unsubscribed(
    make_site, prosody_server, gateway_settings, engine, redis_client
) -> None:
    site: Site = await make_site(1)
    newcomer = await connect_operator(prosody_server, gateway_settings, f"new-{uuid.uuid4().hex[:6]}")
    try:
        with engine.begin() as conn:
            site_store.add_operator(conn, site.site_id, newcomer.jid, "Newcomer")
        await SiteDirectory(redis_client, engine, gateway_settings).invalidate(site.site_id)
        subscribe = await newcomer.wait_for(lambda r: r.kind == "presence" and r.ptype == "subscribe")
        assert subscribe.sender == site.bot
        for _ in range(100):
            if newcomer.jid in await site.gateway.desk.availability.available_operators(site.site_id):
                break
            await asyncio.sleep(0.05)
        assert newcomer.jid in await site.gateway.desk.availability.available_operators(site.site_id)
        assert "on the site" in await newcomer.ask(site.bot, "!who") or True
        roster_item = newcomer.xmpp.client_roster[site.bot]
        for _ in range(100):
            if roster_item["subscription"] == "both":
                break
            await asyncio.sleep(0.05)
        assert roster_item["subscription"] == "both"

        with engine.begin() as conn:
            site_store.remove_operator(conn, site.site_id, newcomer.jid)
        await SiteDirectory(redis_client, engine, gateway_settings).invalidate(site.site_id)
        await newcomer.wait_for(lambda r: r.kind == "presence" and r.ptype == "unsubscribed" and r.sender == site.bot)
        for _ in range(100):
            if roster_item["subscription"] in ("none", "remove") or site.bot not in newcomer.xmpp.client_roster:
                break
            await asyncio.sleep(0.05)
        assert roster_item["subscription"] in ("none", "remove")
        for _ in range(100):
            if newcomer.jid not in await site.gateway.desk.availability.available_operators(site.site_id):
                break
            await asyncio.sleep(0.05)
        assert newcomer.jid not in await site.gateway.desk.availability.available_operators(site.site_id)
        assert await newcomer.ask(site.bot, "!who") == "error:forbidden"
    finally:
        await newcomer.stop()
