"""Prometheus metrics of the gateway (served on HABLA_GATEWAY_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

XMPP_CONNECTED = Gauge("habla_gateway_xmpp_connected", "1 while the component stream is up")
XMPP_RECONNECTS = Counter("habla_gateway_xmpp_reconnects_total", "Lost XMPP streams")
LEASE_HELD = Gauge("habla_gateway_lease_held", "1 while this instance is the active gateway of its domain")
PARTITIONS_OWNED = Gauge("habla_gateway_partitions_owned", "Partitions (component domains) this process owns")
# When this process could write to XMPP for a domain: from its component stream being
# admitted to that stream being closed (CLOCK_MONOTONIC seconds, comparable between the
# processes of one host). Tests check that two processes' spans of one domain never overlap.
OWNED_SINCE = Gauge(
    "habla_gateway_owned_since_seconds", "When this process's stream for the domain was admitted (0: never)", ["domain"]
)
OWNED_UNTIL = Gauge("habla_gateway_owned_until_seconds", "When that stream was closed (0: still open)", ["domain"])
MOVES = Counter("habla_gateway_partitions_handed_over_total", "Partitions this process handed over (rebalance or stop)")
STANZAS_SENT = Counter("habla_gateway_stanzas_sent_total", "Stanzas handed to the XMPP stream", ["kind"])
PRESENCE_COALESCED = Counter(
    "habla_gateway_presence_coalesced_total", "Visitor presence updates replaced by a newer one before sending"
)
PRESENCE_DEFERRED = Counter(
    "habla_gateway_presence_deferred_total", "Presence sends postponed by the per-operator ceiling"
)
VISITOR_LINES = Counter("habla_gateway_visitor_lines_total", "Visitor lines handled", ["outcome"])
OPERATOR_LINES = Counter("habla_gateway_operator_lines_total", "Operator lines relayed to visitors")
COMMANDS = Counter("habla_gateway_commands_total", "Operator commands", ["command"])
STRANGERS = Counter("habla_gateway_strangers_total", "Stanzas refused because the sender is no operator of the site")
OPERATOR_LINES_BOUNCED = Counter(
    "habla_gateway_operator_lines_bounced_total",
    "Operator lines bounced with an XMPP error after HABLA_GATEWAY_LINE_RETRY_S (Redis or broker unavailable)",
)
OPERATOR_LINES_DELAYED = Counter(
    "habla_gateway_operator_lines_delayed_total",
    "Operator lines logged but not published within HABLA_GATEWAY_LINE_RETRY_S (operator told; published later)",
)
BARRIER_PINGS = Counter(
    "habla_gateway_barrier_pings_total", "Pings to the XMPP server confirming written stanzas", ["outcome"]
)
BARRIER_SECONDS = Histogram("habla_gateway_barrier_seconds", "Round trip of one barrier ping")
RELAY_SECONDS = Histogram("habla_gateway_relay_seconds", "Handling time of one chat line", ["direction"])
ROSTER_PUSHES = Counter("habla_gateway_roster_pushes_total", "Roster writes (XEP-0356) started")
ROSTER_COALESCED = Counter(
    "habla_gateway_roster_coalesced_total", "Roster changes replaced by a newer one before being written"
)
ROSTER_DEFERRED = Counter("habla_gateway_roster_deferred_total", "Roster writes postponed by the per-operator ceiling")
ROSTER_FAILED = Counter("habla_gateway_roster_failed_total", "Roster writes the XMPP server refused", ["condition"])
