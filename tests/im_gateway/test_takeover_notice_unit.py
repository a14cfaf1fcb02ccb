"""Against the test Redis, no XMPP: when a restart notice is due, and the open
conversations it goes to (routing's batched reads)."""

from __future__ import annotations

import dataclasses
import uuid

from libs.common.settings import Settings
from services.im_gateway.routing import Routing
from services.im_gateway.takeover_notice import LEAD, Succession, notice_text


async def test_a_notice_is_due_only_after_an_owner_that_did_not_stop_cleanly(settings: Settings, redis_client) -> None:
    s = dataclasses.replace(settings, xmpp_component_domain=f"p{uuid.uuid4().hex[:6]}.chat.localhost")
    first, second, third, fourth = (Succession(redis_client, s, f"token-{n}") for n in range(4))
    assert await first.claim() is None  # nobody before: nothing to tell
    assert await first.claim() is None  # claiming again (same owner) is no takeover
    await first.released()  # SIGTERM: a graceful stop
    assert await second.claim() is None
    # second dies (no release): whoever comes next owes a notice...
    due = await third.claim()
    assert due is not None
    # ...and so does the one after, if third died before telling (nothing sent yet).
    assert await fourth.claim() is not None
    await fourth.told(await fourth.claim() or 0)
    await fourth.released()
    assert await first.claim() is None  # told, then stopped cleanly: nothing due


async def test_the_notice_names_the_time_in_utc() -> None:
    assert notice_text(0) == (
        f"{LEAD}00:00:00 UTC. Lines you sent in the last seconds before that which still show no delivery tick "
        "(receipt) were not received: please send them again."
    )


async def test_open_conversations_and_counts_are_read_in_batches(settings: Settings, redis_client) -> None:
    routing = Routing(redis_client, settings)
    site_a, site_b = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    operator = f"op-{uuid.uuid4().hex[:6]}@chat.localhost"
    await routing.assign("c1-" + site_a, site_a, "v1", operator)
    await routing.offer("c2-" + site_a, site_a, "v2", ["x@chat.localhost", "y@chat.localhost"])
    await routing.assign("c3-" + site_b, site_b, "v3", operator)
    # A conversation whose state expired without a close: counted nowhere, and dropped.
    await redis_client.delete(settings.redis_key("gw", "conv", "c3-" + site_b))
    found = await routing.open_conversations_of([site_a, site_b])
    assert sorted((c.conversation_id, c.recipients) for c in found) == [
        ("c1-" + site_a, (operator,)),
        ("c2-" + site_a, ("x@chat.localhost", "y@chat.localhost")),
    ]
    assert await routing.chatting(site_a) == 2 and await routing.chatting(site_b) == 0
    assert await routing.load(operator) == 1
    assert not await redis_client.sismember(settings.redis_key("gw", "siteconv", site_b), "c3-" + site_b)
    assert await routing.open_conversations_of([]) == []
