"""How the partitions a process may own are shared between gateway processes.

Ownership itself is per component domain and unchanged (services.im_gateway.lease): a
partition is claimed only once its lease is vacant AND the XMPP server admits our
component connection for its domain, then the lease is SET to our token. This module only
decides *when* a process bids for a free partition (never held, or released by a
process that stopped): one that already owns k of them waits k * SPREAD_S (at most
SPREAD_MAX_S) longer, so processes started together end up with a share each. A dead
owner's partition (lease held, renewals missed) is claimed at once by whoever looks
first: speed matters there, not balance.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from libs.common.settings import Settings, SettingsError
from services.im_gateway import metrics

# A standby looks at a partition about once a second (gateway.STANDBY_RETRY_S): a
# process owning partitions bids one look later than one owning none. Capped so that a
# takeover by a busy survivor costs at most one extra look (~1 s; total well under 5 s).
SPREAD_S = 0.5
SPREAD_MAX_S = 1.0


class Seats:
    """The partitions this process owns (counted, not named: the leases name them)."""

    def __init__(self) -> None:
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    @held.setter
    def held(self, value: int) -> None:
        self._held = value
        metrics.PARTITIONS_OWNED.set(value)

    def delay(self) -> float:
        return min(self.held * SPREAD_S, SPREAD_MAX_S)


async def agree_on_count(redis: aioredis.Redis, settings: Settings, count: int) -> None:
    """P is fixed per deployment: the first gateway records it in Redis, and one started
    with another P refuses to run (it would bind sites to other partitions' queues than
    the running gateways, so a site's lines would reach two owners). Changing P is a
    migration (README): stop every gateway, then delete the key."""
    key = settings.redis_key("gw", "partitions")
    await redis.set(key, count, nx=True)
    recorded = await redis.get(key)
    if recorded is not None and int(recorded) != count:
        raise SettingsError(
            f"HABLA_GATEWAY_PARTITIONS={count}, but the running deployment has {int(recorded)} "
            f"(Redis key {key}); changing it is a migration: see the README (im_gateway, Partitions)"
        )
