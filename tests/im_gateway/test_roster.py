"""Rosters the operator never manages, seen through a strict client on Prosody and ejabberd.

Where the server grants the component roster access (XEP-0356: make run's and the
tests' Prosody), the bot and the relevant visitors appear in the roster with no prompt.
ejabberd 23.01 advertises the grant but fails every roster write (ejabberd issue
#3942): there the gateway falls back to subscription requests, which the person
behind the client accepts (``contact`` in conftest), and only what needs a roster
write is skipped, with that reason.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import slixmpp

from libs.common import codec
from libs.common.db import site_store
from libs.common.sitedir import SiteDirectory
from libs.common.state.sessions import VisitorSessions
from services.im_gateway.inbound import VISIT_ENDED
from services.im_gateway.roster_pushes import Item
from services.im_gateway.rosters import group_name
from tests.im_gateway.conftest import Site, Visitor, connect_operator, contact, gone_from_roster
from tests.im_gateway.operator_client import OperatorClient

# Roster writes (XEP-0356) and the subscription fallback differ by server.
pytestmark = pytest.mark.both_servers

NO_WRITES = "the server refuses roster writes (ejabberd 23.01, issue #3942): subscription fallback instead"


async def _end_visit(site: Site, visitor: Visitor) -> None:
    """What the frontend does when a visit's heartbeat stopped: session gone, LEFT published."""
    await VisitorSessions(site.redis, site.settings).forget(visitor.visitor_id)
    await site.event(visitor, codec.VisitorEventKind.LEFT)


async def test_bot_chatting_visitor_follow_and_departure_in_the_roster(make_site, xmpp_server) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    if xmpp_server.kind == "prosody":
        assert site.joined == ["privilege"], "the bot must arrive with no prompt where the grant works"
    # The site is online as soon as the operator is (make_site waited for it).
    assert await site.online()
    bot = op.roster_item(site.bot)
    assert bot is not None and bot["subscription"] == "both"

    visitor = await site.visitor(page_url="https://shop.example/checkout", title="Checkout")
    await site.say(visitor, "Do you ship to Spain?")
    await op.wait_for(lambda r: r.kind == "message" and r.body == "Do you ship to Spain?")
    await site.contact(visitor)
    shown = await op.wait_for(lambda r: r.kind == "presence" and r.sender == visitor.jid and r.ptype == "")
    assert "Checkout — https://shop.example/checkout" in shown.status
    if site.roster_managed:
        item = op.roster_item(visitor.jid)
        assert item is not None and item["groups"] == [group_name("Test shop")], item

    # !follow: page changes of a visitor who is not chatting show as their status.
    browsing = await site.visitor(page_url="https://shop.example/", title="Home")
    assert "Following" in await op.ask(site.bot, f"!follow {browsing.jid.split('@')[0]}")
    await site.contact(browsing)
    await site.page_view(browsing.visitor_id, "https://shop.example/sandals", "Sandals")
    await op.wait_for(lambda r: r.kind == "presence" and r.sender == browsing.jid and "Sandals" in r.status)

    # The visit ends: the visitor leaves the roster (or, without writes, shows as gone).
    await _end_visit(site, visitor)
    if site.roster_managed:
        await gone_from_roster(op, visitor.jid)
    else:
        await op.wait_for(lambda r: r.sender == visitor.jid and r.ptype == "unavailable")
    assert op.roster_item(site.bot) is not None


async def test_a_second_resource_sees_the_same_at_once(make_site, gateway_settings) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    visitor = await site.visitor(page_url="https://shop.example/boots", title="Boots")
    await site.say(visitor, "hello")
    await op.wait_for(lambda r: r.body == "hello")
    await site.contact(visitor)
    # The same account on another device: its roster and presence come from the server's
    # roster and the gateway's answers to the server's probes, not from a new prompt.
    second = OperatorClient(f"{op.jid}", op.password, "127.0.0.1", gateway_settings.xmpp_c2s_port, resource="phone")
    await second.start()
    try:
        assert second.subscribed_to(site.bot) and second.subscribed_to(visitor.jid)
        await second.wait_for(lambda r: r.kind == "presence" and r.sender == site.bot and r.ptype == "", within=30)
        seen = await second.wait_for(lambda r: r.kind == "presence" and r.sender == visitor.jid, within=30)
        assert "Boots" in seen.status
        assert not [r for r in second.received if r.ptype == "subscribe"], "no prompt on the second device"
    finally:
        await second.stop()


async def test_roster_keeps_at_most_the_cap_of_idle_visitors(make_site, gateway_settings) -> None:
    site: Site = await make_site(1)
    if not site.roster_managed:
        pytest.skip(NO_WRITES)
    op = site.operators[0]
    cap = gateway_settings.gateway_roster_cap
    visitors = [await site.visitor(page_url=f"https://shop.example/{i}", title=f"Page {i}") for i in range(cap + 3)]
    newest = visitors[-cap:]
    for visitor in newest:
        jid = visitor.jid
        await op.wait_roster(lambda: op.subscribed_to(jid), within=20)  # noqa: B023 - awaited at once
    domain = "@" + gateway_settings.xmpp_component_domain

    def ours() -> set[str]:
        return {jid for jid in op.xmpp.client_roster if jid.endswith(domain) and op.roster_item(jid)}

    # The older visitors, added while they were the newest, leave at the push ceiling's pace.
    expected = {site.bot} | {v.jid for v in newest}
    await op.wait_roster(lambda: ours() == expected, within=20)
    await asyncio.sleep(1.0)
    assert ours() == expected  # the newest visitors and the bot, nothing more


async def test_stale_visitor_contact_is_told_the_visit_ended(make_site, gateway_settings) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    stale = f"amber-otter-{uuid.uuid4().int % 1000}@{gateway_settings.xmpp_component_domain}"
    # A contact left from an old visit: the client asks for its presence.
    op.xmpp.send_presence(pto=stale, ptype="subscribe")
    ended = await op.wait_for(lambda r: r.sender == stale and r.ptype in ("unsubscribed", "error"), within=30)
    assert ended.ptype == "unsubscribed", "a visit that ended is no stranger's request"
    assert not [r for r in op.received if r.sender == stale and r.error == "forbidden"]
    if site.roster_managed:
        await gone_from_roster(op, stale)


@pytest.mark.parametrize("late_roster", [False, True], ids=["roster-at-once", "roster-late"])
async def test_stale_contact_is_answered_then_removed(
    make_site, gateway_settings, monkeypatch: pytest.MonkeyPatch, late_roster: bool
) -> None:
    site: Site = await make_site(1)
    if not site.roster_managed:
        pytest.skip(NO_WRITES)
    op = site.operators[0]
    stale = f"coral-lynx-{uuid.uuid4().int % 1000}@{gateway_settings.xmpp_component_domain}"
    # A contact an earlier run left in the roster, of no site we can tell (site "").
    site.gateway.rosters.pushes.want(op.jid, stale, Item(stale, "coral-lynx", "Old visitors", ""))
    await op.wait_roster(lambda: op.subscribed_to(stale))
    # Another device logs in: the server probes every contact, the stale one included.
    if late_roster:
        # The second device's roster result comes a second late (as on a loaded server):
        # the device's available presence reaches the gateway before the server's probe,
        # and the contact's removal must not overtake "visit ended" (it did: CI saw it).
        monkeypatch.setattr(slixmpp.ClientXMPP, "get_roster", _late(slixmpp.ClientXMPP.get_roster))
    second = OperatorClient(op.jid, op.password, "127.0.0.1", gateway_settings.xmpp_c2s_port, resource="tablet")
    await second.start()
    try:
        ended = await second.wait_for(lambda r: r.sender == stale and r.ptype == "unavailable")
        assert ended.status == VISIT_ENDED
        await gone_from_roster(op, stale)
        await gone_from_roster(second, stale)
        assert not [r for r in second.received if r.sender == stale and r.error]
    finally:
        await second.stop()


async def test_added_operator_gets_the_bot_and_removed_one_loses_it(
    make_site, xmpp_server, gateway_settings, engine, redis_client
) -> None:
    site: Site = await make_site(1)
    newcomer = await connect_operator(xmpp_server, gateway_settings, f"new-{uuid.uuid4().hex[:6]}")
    try:
        with engine.begin() as conn:
            site_store.add_operator(conn, site.site_id, newcomer.jid, "Newcomer")
        await SiteDirectory(redis_client, engine, gateway_settings).invalidate(site.site_id)
        how = await contact(newcomer, site.bot, gateway=site.gateway)
        if xmpp_server.kind == "prosody":
            assert how == "privilege"
        for _ in range(200):
            if newcomer.jid in await site.gateway.desk.availability.available_operators(site.site_id):
                break
            await asyncio.sleep(0.05)
        assert newcomer.jid in await site.gateway.desk.availability.available_operators(site.site_id)
        assert "on the site" in await newcomer.ask(site.bot, "!who") or True

        with engine.begin() as conn:
            site_store.remove_operator(conn, site.site_id, newcomer.jid)
        await SiteDirectory(redis_client, engine, gateway_settings).invalidate(site.site_id)
        if how == "privilege":
            await gone_from_roster(newcomer, site.bot)
        else:
            await newcomer.wait_for(lambda r: r.ptype == "unsubscribed" and r.sender == site.bot)
            await newcomer.wait_roster(lambda: not newcomer.subscribed_to(site.bot))
        for _ in range(100):
            if newcomer.jid not in await site.gateway.desk.availability.available_operators(site.site_id):
                break
            await asyncio.sleep(0.05)
        assert newcomer.jid not in await site.gateway.desk.availability.available_operators(site.site_id)
        assert await newcomer.ask(site.bot, "!who") == "error:forbidden"
    finally:
        await newcomer.stop()


async def test_help_and_status_explain_the_grant_only_where_it_is_missing(make_site) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    answer = await op.ask(site.bot, "!help")
    if site.roster_managed:
        assert "XEP-0356" not in answer
    else:
        assert "privileged_entities" in answer and "mod_privilege" in answer
        status = await op.wait_for(lambda r: r.sender == site.bot and r.ptype == "" and "XEP-0356" in r.status)
        assert "visitors on site" in status.status or "site bot" in status.status


async def test_after_a_reconnect_contacts_of_ended_visits_leave_the_roster(make_site, gateway_settings) -> None:
    site: Site = await make_site(1)
    if not site.roster_managed:
        pytest.skip(NO_WRITES)
    op = site.operators[0]
    stale = f"tidy-vole-{uuid.uuid4().int % 1000}@{gateway_settings.xmpp_component_domain}"
    site.gateway.rosters.pushes.want(op.jid, stale, Item(stale, "tidy-vole", "Old visitors", ""))
    await op.wait_roster(lambda: op.subscribed_to(stale))
    # A new stream (as after a restart): the gateway reads the roster, finds a contact of
    # no visit it knows, and takes it out; the bot stays.
    site.gateway.component.abort_stream()
    await gone_from_roster(op, stale, within=30)
    assert op.roster_item(site.bot) is not None
    await site.wait_online()


def _late(get_roster: Any) -> Any:
    def late(self: Any, *args: Any, **kwargs: Any) -> Any:
        async def after_a_second() -> Any:
            await asyncio.sleep(1.0)
            return await get_roster(self, *args, **kwargs)

        return asyncio.ensure_future(after_a_second())

    return late
