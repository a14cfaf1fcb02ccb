"""The whole RabbitMQ topology, as data, in one place (declared by libs.common.messaging).

Exchanges follow ARCHITECTURE.md. Work queues are quorum queues: replicated-ready,
durable, and they count redeliveries, so a message that crashes its consumer process
again and again is dead-lettered after DELIVERY_LIMIT attempts instead of looping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ExchangeKind(StrEnum):
    TOPIC = "topic"
    DIRECT = "direct"
    FANOUT = "fanout"


VISITOR = "habla.visitor"  # <site_id>.<event>: message, pageview, event, offline
OPERATOR = "habla.operator"  # <site_id>.<event>: message, presence, action, status
DELIVER = "habla.deliver"  # key = frontend instance id
CONVERSATION = "habla.conversation"  # <site_id>.closed
TRANSCRIPTS = "habla.transcripts"  # fanout: email + any downstream consumer
DEAD = "habla.dead"  # key = source queue name

EXCHANGES: dict[str, ExchangeKind] = {
    VISITOR: ExchangeKind.TOPIC,
    OPERATOR: ExchangeKind.TOPIC,
    DELIVER: ExchangeKind.DIRECT,
    CONVERSATION: ExchangeKind.TOPIC,
    TRANSCRIPTS: ExchangeKind.FANOUT,
    DEAD: ExchangeKind.TOPIC,
}

# A consumer process that dies while handling a message gets it redelivered; after
# this many deliveries RabbitMQ itself dead-letters it (reason "delivery_limit").
# Five covers a rolling restart or two without letting a poison message loop forever.
DELIVERY_LIMIT = 5


@dataclass(frozen=True)
class QueueSpec:
    """A queue, what it is bound to, and how failures are handled."""

    name: str
    bindings: tuple[tuple[str, str], ...]  # (exchange, routing key)
    # Work queues are durable quorum queues with retry and dead-letter queues. A
    # per-instance queue (a frontend's deliveries) is a transient classic queue that
    # vanishes with its instance: the conversation log in Redis is the durable copy.
    durable: bool = True
    expires_ms: int | None = None  # transient queues: removed this long after last use
    retry: bool = True
    extra_arguments: dict[str, object] = field(default_factory=dict)
    # Transient queues of one kind share a durable dead-letter queue, named by this
    # prefix, that outlives every instance (a per-instance one would vanish with it).
    dead_letter_prefix: str | None = None
    # Struct names a consumer of this queue handles; anything else is dead-lettered by
    # the bus before a handler sees it ("wrong type"). Empty: any (tests, tools).
    accepts: frozenset[str] = frozenset()

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.dead_letter_prefix or self.name}.dead"

    @property
    def dead_letter_key(self) -> str:
        """The binding key on habla.dead; dead letters are published with the queue's name."""
        return f"{self.dead_letter_prefix}.#" if self.dead_letter_prefix else self.name

    def retry_queue(self, delay_ms: int) -> str:
        return f"{self.name}.retry.{delay_ms}ms"


# --- work queues, one per consumer module ------------------------------------------
ARCHIVE = QueueSpec(
    "transcript_worker.archive",
    (
        (VISITOR, "*.message"),
        (VISITOR, "*.pageview"),
        (VISITOR, "*.event"),
        (OPERATOR, "*.message"),
        (OPERATOR, "*.action"),
    ),
    accepts=frozenset({"ChatMessage", "PageView", "VisitorEvent", "OperatorAction"}),
)
TRANSCRIPTS_BUILD = QueueSpec(
    "transcript_worker.transcripts", ((CONVERSATION, "*.closed"),), accepts=frozenset({"ConversationClosed"})
)
EMAIL = QueueSpec(
    "transcript_worker.email",
    ((TRANSCRIPTS, ""), (VISITOR, "*.offline")),
    accepts=frozenset({"Transcript", "OfflineMessage"}),
)
# What ends a conversation at once: an operator's end/block (OperatorAction) and the
# visitor's "end chat" (VisitorEvent ENDED_CHAT). A queue of its own, apart from the
# archive, so a close never waits behind an archive backlog.
CLOSER = QueueSpec(
    "transcript_worker.closer",
    ((OPERATOR, "*.action"), (VISITOR, "*.event")),
    accepts=frozenset({"OperatorAction", "VisitorEvent"}),
)

WORK_QUEUES: tuple[QueueSpec, ...] = (
    ARCHIVE,
    TRANSCRIPTS_BUILD,
    EMAIL,
    CLOSER,
)


# --- the gateway's queues: one pair per XMPP component domain -------------------------
# Gateways for different domains (or different XMPP servers) share one broker without
# taking each other's messages: each domain has its own queues, bound per site to the
# sites that domain serves (sites.xmpp_domain; services.im_gateway.bindings keeps the
# bindings in step). A partition is a component domain too (libs.common.partitions):
# partition N of domain D has im_gateway.p<N>.D.visitor / .conversation, bound the same
# way per site; with one partition the names are D's own, as before partitions.
def gateway_visitor_queue(domain: str) -> QueueSpec:
    """Visitor lines, page views and events of the domain's sites."""
    return QueueSpec(f"im_gateway.{domain}.visitor", (), accepts=frozenset({"ChatMessage", "PageView", "VisitorEvent"}))


def gateway_conversation_queue(domain: str) -> QueueSpec:
    """Closed conversations of the domain's sites (the gateway frees the operator's slot)."""
    return QueueSpec(f"im_gateway.{domain}.conversation", (), accepts=frozenset({"ConversationClosed"}))


def gateway_site_bindings(site_id: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """Per queue kind ("visitor", "conversation"), what binds one site to a gateway."""
    return {
        "visitor": ((VISITOR, f"{site_id}.message"), (VISITOR, f"{site_id}.pageview"), (VISITOR, f"{site_id}.event")),
        "conversation": ((CONVERSATION, f"{site_id}.closed"),),
    }


FRONTEND_DELIVERY_PREFIX = "rpc_frontend.deliver"


def frontend_delivery_queue(frontend_id: str) -> QueueSpec:
    """The queue a frontend instance reads its visitors' deliveries from."""
    # 60 s of absence removes the queue of an instance that died; one that only
    # reconnects within a minute keeps it.
    return QueueSpec(
        f"{FRONTEND_DELIVERY_PREFIX}.{frontend_id}",
        ((DELIVER, frontend_id),),
        durable=False,
        expires_ms=60_000,
        retry=False,
        dead_letter_prefix=FRONTEND_DELIVERY_PREFIX,
        accepts=frozenset({"VisitorDelivery"}),
    )
