"""A publisher's first publish to a quorum queue right after the queue's leader node died.

RabbitMQ 3.10's quorum-queue client (rabbit_fifo_client) keeps, per channel and queue,
the servers to ask, led by the leader the queue's record names when the channel first
routes a message there; a channel's first publish also asks that node which machine
version it runs. If that node just died and no new leader is recorded yet, the answer
is `nodedown` and the publish is nacked, and so is every later one of that channel to
that queue: its list never changes, so it keeps asking the dead node until that node is
back (18-25 s in tests/cluster/test_netns_failover.py's broker-host kill), or forever.
A channel opened after the new leader is recorded is fine. ``Bus`` therefore publishes
on a new channel after a nack (libs/common/messaging.RENEW_CHANNEL_AFTER_NACK_S).

To hold the window open, the queue's third member is frozen (SIGSTOP: its distribution
link stays up, so the publisher's node keeps its majority under pause_minority, but it
votes for nobody) while the leader's node is SIGKILLed: no new leader until it thaws.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from libs.common import topology
from libs.common.messaging import BrokerUnavailable, Bus
from libs.common.settings import Settings
from libs.common.topology import QueueSpec
from tests.factories import chat_message
from tools.rabbit_cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(400)]

VHOST = "habla-leader-gone"
# How long a publish is retried before the test fails: a deadline for an election on a
# loaded machine, not a promise of speed (the time taken is printed).
DEADLINE_S = 60.0
SPEC = QueueSpec("leader.gone", ((topology.VISITOR, "*.message"),), accepts=frozenset({"ChatMessage"}))


async def _publish(bus: Bus, timeout_s: float) -> tuple[float | None, int]:
    """Publish one message as every caller does (same id again after a failure, 0.2 s
    apart) until confirmed: (seconds it took or None, failed attempts)."""
    message, began, failures = chat_message("a line"), time.monotonic(), 0
    while time.monotonic() < began + timeout_s:
        try:
            await bus.publish(topology.VISITOR, "s.message", message)
            return time.monotonic() - began, failures
        except BrokerUnavailable:
            failures += 1
            await asyncio.sleep(0.2)
    return None, failures


async def test_a_publish_after_the_queue_leader_died_is_confirmed_once_a_new_leader_is_elected(
    rabbit: Cluster,
) -> None:
    rabbit.add_vhost(VHOST)

    def settings_for(i: int) -> Settings:
        return Settings.from_env({}, amqp_url=rabbit.nodes[i].url(VHOST), amqp_quorum=True)

    # The queue's leader is where it was declared from (client-local).
    declarer = await Bus.connect(settings_for(0), "declarer")
    await declarer.declare_topology(queues=(SPEC,))
    await declarer.close()
    out = rabbit.ctl(rabbit.nodes[1], "list_queues", "-p", VHOST, "name", "leader", "--no-table-headers", "--quiet")
    leaders = dict(line.split() for line in out.strip().splitlines())
    leader = next(node for node in rabbit.nodes if node.name == leaders[SPEC.name])
    publisher_node, frozen = (node for node in rabbit.nodes if node is not leader)
    publisher = await Bus.connect(
        Settings.from_env({}, amqp_url=publisher_node.url(VHOST), amqp_quorum=True), "publisher"
    )
    await publisher.declare_topology(queues=())  # the exchanges; nothing published to the queue yet
    assert frozen.process is not None
    os.killpg(frozen.process.pid, signal.SIGSTOP)
    try:
        await asyncio.to_thread(rabbit.kill, leader)
        # No leader can be elected now: this channel's first publish to the queue asks the dead node.
        took, refused = await _publish(publisher, 2.0)
        assert took is None and refused > 0, (took, refused)
    finally:
        os.killpg(frozen.process.pid, signal.SIGCONT)
    thawed = time.monotonic()
    # The killed node stays down: a confirm at all means the publisher stopped asking it
    # (a new channel after the nacks), however long the election took on this machine.
    took, more = await _publish(publisher, DEADLINE_S)
    print(
        f"\nwhile the queue had no leader: {refused} attempts refused, channels renewed "
        f"{publisher.channels_renewed}; confirmed {took and round(took, 2)} s after the frozen member "
        f"thawed ({more} more refused)"
    )
    assert took is not None, f"still refused {DEADLINE_S:g} s after a new leader could be elected (dead node not back)"
    assert publisher.channels_renewed > 0
    # The next ones go straight through: not one refused.
    again, failures = await _publish(publisher, DEADLINE_S)
    assert again is not None and failures == 0
    await publisher.close()
    print(f"took {time.monotonic() - thawed:.1f} s in all")
