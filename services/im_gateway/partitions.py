"""How the partitions a process may own are shared between gateway processes.

Ownership itself is per component domain and unchanged (services.im_gateway.lease): a
partition is claimed only once its lease is vacant AND the XMPP server admits our
component connection for its domain, then the lease is SET to our token. This module only
decides *when* a process bids for a vacant partition: one that already owns k of them
waits k * SPREAD_S (at most SPREAD_MAX_S) longer, so processes started together end up
with a share each, while a lone survivor still takes every orphan over within seconds.
"""

from __future__ import annotations

# A standby looks at a partition about once a second (gateway.STANDBY_RETRY_S): a
# process owning partitions bids one look later than one owning none. Capped so that a
# takeover by a busy survivor costs at most one extra look (~1 s; total well under 5 s).
SPREAD_S = 0.5
SPREAD_MAX_S = 1.0


class Seats:
    """The partitions this process owns (counted, not named: the leases name them)."""

    def __init__(self) -> None:
        self.held = 0

    def delay(self) -> float:
        return min(self.held * SPREAD_S, SPREAD_MAX_S)
