"""1,000 page views across 100 visitors never flood an operator, and followed visitors' last pages arrive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.im_gateway.conftest import Site
from tests.im_gateway.operator_client import Received

VISITORS = 100
VIEWS_PER_VISITOR = 10  # 1,000 page views
FOLLOWED = 10
# The ceiling holds exactly for send times (the gateway's clock). Receive times in this
# process (which also runs the gateway and the publishers) bunch up under CPU load, so
# the receiver-side check allows a second window's worth of jitter.
RECEIVE_SLACK = 2


def _last_page(jid: str, suffix: str) -> Callable[[Received], bool]:
    return lambda r: r.kind == "presence" and r.sender == jid and r.status.endswith(suffix)


async def test_burst_of_page_views_respects_the_ceiling(make_site, gateway_settings) -> None:
    site: Site = await make_site(1)
    op = site.operators[0]
    domain = "@" + gateway_settings.xmpp_component_domain
    visitors = [await site.visitor(page_url="https://shop.example/", title="Home") for _ in range(VISITORS)]
    followed = visitors[:FOLLOWED]
    for visitor in followed:
        assert "Following" in await op.ask(site.bot, f"!follow {visitor.jid.split('@')[0]}")
    for visitor in followed:
        await site.contact(visitor)  # followed visitors are roster contacts (or ask once to be)
    # Let the follow confirmations' presences drain before measuring.
    await op.wait_for(lambda r: r.kind == "presence" and r.sender == followed[-1].jid and "Home" in r.status, within=30)
    await asyncio.sleep(1.0)
    sent_at: list[float] = []
    site.gateway.desk.coalescer.on_sent = lambda operator, at: sent_at.append(at) if operator == op.jid else None
    started = time.monotonic()

    async def views_of(index: int, visitor) -> None:
        for n in range(VIEWS_PER_VISITOR):
            await site.page_view(visitor.visitor_id, f"https://shop.example/p/{index}/{n}", f"Page {n}")

    await asyncio.gather(*(views_of(i, v) for i, v in enumerate(visitors)))
    published = time.monotonic()

    last = VIEWS_PER_VISITOR - 1
    for index, visitor in enumerate(followed):
        await op.wait_for(_last_page(visitor.jid, f"/p/{index}/{last}"), within=60)
    finished = time.monotonic()
    stanzas = [r.at for r in op.received if r.kind == "presence" and r.at >= started and r.sender.endswith(domain)]
    ceiling = gateway_settings.gateway_presence_ceiling_per_s
    site.gateway.desk.coalescer.on_sent = None
    busiest_sent = max(sum(1 for t in sent_at[i:] if t - start < 1.0) for i, start in enumerate(sent_at))
    busiest = max(sum(1 for t in stanzas[i:] if t - start < 1.0) for i, start in enumerate(stanzas))
    print(
        f"\n{len(stanzas)} presence stanzas for 1,000 page views (published in {published - started:.1f} s); "
        f"busiest second {busiest_sent} sent, {busiest} received (ceiling {ceiling}); "
        f"all last pages in {finished - started:.1f} s"
    )
    assert len(sent_at) >= FOLLOWED  # the presences the operator got went through the coalescer
    assert busiest_sent <= ceiling
    assert busiest <= ceiling * RECEIVE_SLACK
    assert len(stanzas) <= ceiling * (finished - started + 1)
    # Unfollowed visitors' page views never produced a presence for this operator (they
    # may be in the roster as the site's newest visitors, shown once on the page they had).
    unfollowed = {v.jid for v in visitors[FOLLOWED:]}
    assert not [r for r in op.received if r.kind == "presence" and r.sender in unfollowed and "/p/" in r.status]
