"""One active gateway per component domain: the Redis lease, against the real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from services.im_gateway.lease import DomainLease, LeaseLost


async def test_standby_waits_and_takes_over_when_the_active_one_stops_renewing(settings, redis_client) -> None:
    s = dataclasses.replace(settings, gateway_lease_ttl_s=1, xmpp_component_domain=f"lease-{uuid.uuid4().hex[:6]}")
    active, standby = DomainLease(redis_client, s), DomainLease(redis_client, s)
    await active.acquire()
    keeper = asyncio.create_task(active.keep())
    waiting = asyncio.create_task(standby.acquire())
    await asyncio.sleep(1.5)  # longer than the TTL: renewals keep it with the active one
    assert not waiting.done()
    await active.held()
    keeper.cancel()  # the active gateway "dies": nobody renews
    await asyncio.wait_for(waiting, 5)
    await standby.held()
    with pytest.raises(LeaseLost):
        await active.held()
    # The old holder notices on its next renewal instead of acting twice.
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(active.keep(), 5)
    await active.release()  # not its lease any more: releasing must not drop the standby's
    await standby.held()
    await standby.release()
