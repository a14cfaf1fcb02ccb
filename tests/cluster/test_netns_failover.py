"""Hosts that die, across network-namespace hosts (`make cluster`'s layout, tools/cluster.py),
under steady load both ways: visitors through the edge HAProxy (sending over HTTP with
retries of the same id, reading over a WebSocket from their cursor, as the widget does),
operators as strict XMPP clients on the XMPP host asking for receipts.

One layout for the module (it takes 2-3 minutes to come up); each test kills one host
with SIGKILL of every process in its namespace (peers see its connections reset), checks
the accounting of tests/chat_load.py, and brings the host back so the next test starts
from the whole layout:

1. the gateway host owning partition 0: its partitions move to the other gateway host;
   at no moment do the live gateways own more than P partitions between them;
2. a broker host: the services reconnect to the 2 surviving RabbitMQ nodes;
3. the Redis master's host: Sentinel promotes the replica (the dead one comes back
   empty and becomes the replica); every conversation keeps its operator;
4. a frontend host: its visitors' WebSockets resume on the other frontend with exactly
   the lines they missed.

Each test: every visitor line answered 200 reaches its operator (one of the site's two,
always the same) and MySQL, every operator line the gateway receipted reaches the visitor
once and MySQL, nothing bounced, nothing shown twice. The figures are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis as sync_redis
import tornado.httpclient

from libs.common import db, partitions, sitedir, state
from libs.common.db import site_store
from libs.common.settings import Settings
from libs.common.state.presence import SiteStatusReader
from services.im_gateway.inbound import DELAYED
from tests.chat_load import Operator, Tally, Visitor, archived, settled, tally, until
from tests.im_gateway.operator_client import OperatorClient
from tools import cluster, netns, prosody

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    # redis-py drops a connection to a killed server without closing its StreamWriter.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

OPERATORS_PER_SITE = 2  # a conversation goes to one of them and must stay with them
VISITORS_PER_SITE = 3
VISITOR_LINE_EVERY_S = 1.0
STEADY_S = 8.0  # load before and after the fault
SETTLE_S = 90.0
_RUNS = itertools.count()

# Every test visitor reaches the edge from this machine's one address.
ENV = {
    "HABLA_VISITOR_MESSAGES_PER_MIN": "100000",
    "HABLA_IP_REQUESTS_PER_MIN": "1000000",
    "HABLA_AMQP_RETRY_DELAYS_MS": "200,1000,3000",
    "HABLA_PRESENCE_HEARTBEAT_S": "2",
    "HABLA_PRESENCE_TTL_S": "6",
    "HABLA_TRANSCRIPT_WAIT_S": "5",
    # Far beyond the takeover's 60 s deadline: a survivor that waited for the dead
    # gateway's leases to expire (instead of claiming them orphaned) fails that test.
    "HABLA_GATEWAY_LEASE_TTL_S": "600",
}


@dataclass
class Site:
    id: str
    partition: int
    operators: list[tuple[str, str]] = field(default_factory=list)  # (jid, password)


@dataclass
class Hosts:
    layout: cluster.Layout
    sites: list[Site]

    @property
    def settings(self) -> Settings:
        assert self.layout.settings is not None
        return self.layout.settings


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    layout = cluster.up(ENV)
    try:
        yield Hosts(layout, _sites(layout))
    finally:
        tag = layout.net.tag
        layout.close()
        assert netns.leftovers(tag) == []


def _sites(layout: cluster.Layout) -> list[Site]:
    """One site per partition (crc32 of the id decides), two operators each."""
    settings, cfg = layout.settings, layout.xmpp
    assert settings is not None and cfg is not None
    engine = db.engine(settings)
    found: dict[int, Site] = {}
    try:
        for k in itertools.count():
            assert k < 50, "crc32 did not spread 50 site ids over the partitions"
            if len(found) == cluster.PARTITIONS:
                break
            with engine.begin() as conn:
                account = site_store.account_for_email(conn, f"netns{k}-{uuid.uuid4().hex[:6]}@shop.example")
                site_id = site_store.create_site(
                    conn, account, f"Netns {k}", allowed_domains=["127.0.0.1"], transcript_emails=["o@shop.example"]
                ).id
                n = partitions.partition_of(site_id, cluster.PARTITIONS)
                if n in found:
                    continue  # an unused site: no operator, no visitor
                found[n] = Site(site_id, n)
                for i in range(OPERATORS_PER_SITE):
                    user, password = f"op{n}{i}-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:12]
                    prosody.register(cfg, user, password)
                    jid = f"{user}@{cfg.domain}"
                    site_store.add_operator(conn, site_id, jid, f"Agent {n}.{i}")
                    found[n].operators.append((jid, password))
    finally:
        engine.dispose()
    for site in found.values():
        sitedir.invalidate_sync(settings, site.id)  # as the CLI does: the gateways reload it
    return sorted(found.values(), key=lambda site: site.partition)


@dataclass
class Run:
    """The load of one test, and its timeline."""

    hosts: Hosts
    visitors: list[Visitor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)
    # (from, to) in time.monotonic(): operator lines sent then may bounce or go without
    # an answer (the gateway and broker tests say why); outside it, none may.
    may_bounce: list[tuple[float, float]] = field(default_factory=list)

    def excused(self, operator: Operator, body: str) -> bool:
        """Sent within a window where a bounce or no answer is expected, or followed by a
        restart notice in that visitor's window (the operator was told to resend)."""
        sent_at = operator.sent_at[body]
        return any(a <= sent_at <= b for a, b in self.may_bounce) or operator.covered(body)

    def note(self, what: str) -> None:
        self.timeline.append((round(time.monotonic() - self.began, 1), what))


async def _under_load(hosts: Hosts, label: str, fault: Callable[[Run], Awaitable[None]]) -> tuple[Run, Tally]:
    """Steady load, the fault, steady load, settle; asserts the accounting (an operator
    line bounced or unanswered only within ``run.may_bounce``), returns the run and counts."""
    s = hosts.settings
    layout = hosts.layout
    run = Run(hosts)
    redis = state.connect(s)
    status = SiteStatusReader(redis, s)
    tornado.httpclient.AsyncHTTPClient.configure(None, max_clients=100)
    http = tornado.httpclient.AsyncHTTPClient()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        for site in hosts.sites:
            for jid, password in site.operators:
                client = OperatorClient(jid, password, layout.address("xmpp"), s.xmpp_c2s_port)
                assert client.xmpp.auto_authorize is None and client.xmpp.auto_subscribe is False  # strict
                await client.start()
                run.operators.append(Operator(client, site.id))
        for site in hosts.sites:
            deadline = time.monotonic() + 120
            while (await status.get(site.id)).operators_available < OPERATORS_PER_SITE:
                assert time.monotonic() < deadline, f"site {site.id}: its operators never showed as available"
                await asyncio.sleep(0.5)
        # Numbered apart from the other tests' (lines are "v<index>-<n>", "o<index>-<n>"):
        # MySQL holds every test's lines, and each test must find its own there.
        base = next(_RUNS) * 100
        run.visitors = [
            Visitor(base + k * VISITORS_PER_SITE + i, site.id, s.public_url, http)
            for k, site in enumerate(hosts.sites)
            for i in range(VISITORS_PER_SITE)
        ]
        for visitor in run.visitors:
            await visitor.start()

        receivers = [asyncio.create_task(v.receive_ws(stop)) for v in run.visitors]
        tasks += receivers
        tasks += [asyncio.create_task(v.load(stop, VISITOR_LINE_EVERY_S)) for v in run.visitors]
        tasks += [asyncio.create_task(o.talk(stop)) for o in run.operators]
        run.began = time.monotonic()
        await asyncio.sleep(STEADY_S)
        await fault(run)
        await asyncio.sleep(STEADY_S)
        run.note("load stops")
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        # The receivers read on while retries and redeliveries finish.
        settle = asyncio.Event()
        tasks += [asyncio.create_task(v.receive_ws(settle)) for v in run.visitors]

        def done() -> bool:
            return settled(run.visitors, run.operators, run.excused)

        await until(done, SETTLE_S)
        run.note("settled" if done() else "settle time over")
        settle.set()
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for operator in run.operators:
            with contextlib.suppress(Exception):
                await operator.client.stop()
        http.close()
        await redis.aclose()

    engine = db.engine(s)
    bodies, shared_seq = await asyncio.to_thread(archived, engine)
    engine.dispose()
    count = tally(run.visitors, run.operators, bodies)
    report = {
        "test": label,
        "timeline": run.timeline,
        **count.report(run.visitors),
        "WebSockets opened again": sum(v.reconnects for v in run.visitors),
        # A bounce tells the operator the line failed; if the visitor has it anyway, a
        # resend by the operator shows it twice.
        "bounced operator lines the visitor was shown anyway": len(_bounced_but_shown(run, count)),
        "archived (conversation, seq) pairs held by two lines": shared_seq,
    }
    print("\n" + json.dumps(report, indent=1))
    examples = count.examples()
    assert len(count.acked) > 0 and len(count.receipted) > 0, "no load got through"
    assert not count.not_at_operator, examples
    assert not count.twice_at_operator, examples
    assert not count.changed_operator, examples
    owner_of = {body: o for o in run.operators for body in o.sent}
    unanswered = sorted(count.bounced | set(count.silent))
    assert not [b for b in unanswered if not run.excused(owner_of[b], b)], examples
    assert not count.not_shown, examples
    assert not count.shown_twice, examples
    assert not count.not_archived, examples
    assert shared_seq == 0
    return run, count


def _report(figures: dict[str, Any], run: Run, count: Tally) -> None:
    """Print the run's figures and fail on an operator line bounced (the accounting
    already failed any outside ``run.may_bounce``) or one its operator was told is
    delayed (the gateway could not publish it within HABLA_GATEWAY_LINE_RETRY_S)."""
    figures["operator lines bounced"] = len(count.bounced)
    figures["operator lines delayed (a notice instead of a receipt in time)"] = len(_delayed(run))
    print(json.dumps(figures, indent=1))
    assert not count.bounced, count.examples()
    assert not _delayed(run), _delayed(run)


def _delayed(run: Run) -> list[tuple[str, float]]:
    """(visitor JID, when) of every "saved but not yet confirmed" notice to an operator."""
    return [
        (r.sender.split("/")[0], r.at)
        for o in run.operators
        for r in o.client.received
        if r.kind == "message" and not r.error and DELAYED[:40] in r.body
    ]


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status), answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), "", b""
    except OSError:
        return 0, "", b""


def _bounced_but_shown(run: Run, count: Tally) -> list[str]:
    by_index = {v.index: v for v in run.visitors}
    return sorted(b for b in count.bounced if by_index[count.operator_sent[b]].shown[b])


def test_the_status_image_through_the_edge(hosts: Hosts) -> None:
    """Both status_image instances sit behind the edge's :8081 (round robin)."""
    site = hosts.sites[0]
    for _ in range(2):  # one request to each instance
        code, kind, body = _get(f"{hosts.settings.status_public_url}/status/{site.id}/image.png")
        assert (code, kind) == (200, "image/png") and body.startswith(b"\x89PNG"), (code, kind)


def _owners(hosts: Hosts) -> dict[str, str | None]:
    """Partition domain -> the gateway host whose process holds its lease (token host:pid:…)."""
    s = hosts.settings
    assert hosts.layout.redis is not None
    master = hosts.layout.redis.master()
    client = sync_redis.Redis(host=master.host, port=master.port, socket_timeout=2, decode_responses=True)
    pid_host = {pid: name for name in ("gateway1", "gateway2") for pid in hosts.layout.net.host_pids(name)}
    try:
        found: dict[str, str | None] = {}
        for domain in partitions.all_domains(s):
            token = client.get(s.redis_key("gw", "lease", domain))
            found[domain] = pid_host.get(int(str(token).split(":")[1])) if token else None
        return found
    finally:
        client.close()


def _owned(address: str, port: int) -> int:
    """habla_gateway_partitions_owned from a gateway's /metrics (0 if it does not answer)."""
    code, _, body = _get(f"http://{address}:{port}/metrics")
    for line in body.decode(errors="replace").splitlines():
        if code == 200 and line.startswith("habla_gateway_partitions_owned "):
            return int(float(line.split()[1]))
    return 0


async def test_a_gateway_host_dies(hosts: Hosts) -> None:
    layout, s = hosts.layout, hosts.settings
    figures: dict[str, Any] = {}

    async def fault(run: Run) -> None:
        owners = await asyncio.to_thread(_owners, hosts)
        victim = owners[partitions.partition_domain(s, 0)]
        assert victim is not None, owners
        survivor = "gateway2" if victim == "gateway1" else "gateway1"
        moved = sorted(domain for domain, host in owners.items() if host == victim)
        most_owned = 0
        watching = True

        async def watch() -> None:
            # Continuously: the live gateways never own more than P partitions between
            # them (two owners of one partition would make it P + 1).
            nonlocal most_owned
            while watching:
                counts = await asyncio.gather(
                    *(asyncio.to_thread(_owned, layout.address(h), s.gateway_metrics_port) for h in (victim, survivor))
                )
                most_owned = max(most_owned, sum(counts))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        run.note(f"owners {owners}")
        killed_at = time.monotonic()
        pids = await asyncio.to_thread(layout.kill_host, victim)
        run.note(f"{victim} killed ({len(pids)} processes)")
        deadline = time.monotonic() + 60
        while (now := await asyncio.to_thread(_owners, hosts)) and any(now[d] != survivor for d in moved):
            assert time.monotonic() < deadline, f"partitions {moved} not taken over: {now}"
            await asyncio.sleep(0.05)
        taken_at = time.monotonic()
        figures["partitions moved"] = moved
        figures["takeover s (kill -> every moved lease held by the survivor)"] = round(taken_at - killed_at, 2)
        # A line the dead gateway's socket had taken gets no answer (the restart notice
        # covers it). Prosody holds the lines sent until the survivor's component is in
        # (mod_habla_hold): none may bounce, here or anywhere (asserted below).
        run.may_bounce.append((killed_at - 2.0, taken_at + 1.0))
        run.note(f"{moved} held by {survivor}")
        # The first operator line for a visitor of a moved partition, sent after the kill,
        # that the survivor receipted: the partition serves again end to end.
        moved_sites = {site.id for site in hosts.sites if partitions.partition_domain(s, site.partition) in moved}
        await asyncio.sleep(STEADY_S)
        back = [
            at - killed_at
            for o in run.operators
            if o.site_id in moved_sites
            for body, at in o.sent_at.items()
            if at > killed_at and body in o.client.receipts
        ]
        figures["first receipted operator line on a moved partition, s after the kill"] = (
            round(min(back), 2) if back else None
        )
        back_at = time.monotonic()
        await asyncio.to_thread(layout.revive, victim)
        run.note(f"{victim} started again")
        # It may take a partition over again (fair share): a planned handover, during
        # which the giver asks Prosody to hold new lines for the receiver (a line in
        # hand when the giver's stream closed is stored without its receipt).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if victim in (await asyncio.to_thread(_owners, hosts)).values():
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        owners_after = await asyncio.to_thread(_owners, hosts)
        run.note(f"owners after it rejoined {owners_after}")
        figures["owners after the killed host rejoined"] = owners_after
        run.may_bounce.append((back_at, time.monotonic() + 1.0))
        watching = False
        await watcher
        figures["most partitions owned by the live gateways at once"] = most_owned
        assert most_owned <= cluster.PARTITIONS

    run, count = await _under_load(hosts, "gateway host killed", fault)
    owner_of = {body: o for o in run.operators for body in o.sent}
    by_index = {v.index: v for v in run.visitors}
    covered = [b for b in count.silent if owner_of[b].covered(b)]
    shown = [b for b in count.silent if b not in covered and by_index[count.operator_sent[b]].shown[b]]
    figures["operator lines bounced"] = len(count.bounced)
    figures["operator lines with neither receipt nor error"] = len(count.silent)
    figures["  of which covered by a restart notice (read by the dead gateway)"] = len(covered)
    figures["  of which shown to the visitor (in hand when a giver's stream closed)"] = len(shown)
    print(json.dumps(figures, indent=1))
    # The takeover figure is printed, not asserted (benchmarks measure; the goal is under
    # 5 s): that it happened within the 60 s deadline while the leases had 600 s to run
    # is the behaviour.
    # Between the dead gateway's stream closing and the survivor's, Prosody holds the
    # lines to the partition's domain (mod_habla_hold) instead of answering
    # "Component unavailable"; a handover back asks for the same hold.
    assert not count.bounced, f"operator lines bounced: {sorted(count.bounced)[:10]}"
    # A line the dead gateway's socket had taken gets no answer: the operator is told to
    # resend it (restart notice); none may be left unexplained.
    assert not sorted(set(count.silent) - set(covered) - set(shown)), count.examples()


def _connections(hosts: Hosts) -> dict[str, int]:
    """AMQP connections per running broker host (the services' and nobody else's)."""
    broker = hosts.layout.broker
    assert broker is not None
    found: dict[str, int] = {}
    for i, node in enumerate(broker.nodes, 1):
        if node.process is None or node.process.poll() is not None:
            continue
        # Asked of each node about itself: `list_connections` gathers from every node
        # straight into the CLI's own Erlang node, which the other hosts cannot reach.
        with hosts.layout.net.inside(f"broker{i}"):
            out = broker.ctl(node, "eval", "length(rabbit_networking:connections_local()).")
        found[f"broker{i}"] = int(out.strip())
    return found


def _offline_queues(hosts: Hosts, survivor: str, since: float, within_s: float = 120) -> tuple[list[str], float]:
    """The queues a survivor lists as down (their node is dead), and when the list is
    empty (the dead node's transient queues dropped)."""
    broker = hosts.layout.broker
    assert broker is not None
    node = broker.nodes[int(survivor[-1]) - 1]
    seen: set[str] = set()
    while time.monotonic() < since + within_s:
        # Asked of the survivor alone: it answers from its own view of the cluster.
        with hosts.layout.net.inside(survivor):
            out = broker.ctl(node, "list_queues", "-p", "habla", "name", "--offline", "--no-table-headers", "--quiet")
        names = out.split()
        seen.update(names)
        if not names:
            return sorted(seen), time.monotonic()
        time.sleep(0.5)
    return sorted(seen), time.monotonic()


async def test_a_broker_host_dies(hosts: Hosts) -> None:
    layout = hosts.layout
    broker = layout.broker
    assert broker is not None
    figures: dict[str, Any] = {}

    async def fault(run: Run) -> None:
        # The host whose node most services use (a loss they must notice).
        before = await asyncio.to_thread(_connections, hosts)
        victim = max(before, key=lambda h: before[h])
        node = broker.nodes[int(victim[-1]) - 1]
        # A host that died a moment ago (the previous test's, say) may still be catching
        # up: losing another node before that would leave quorum queues without a majority.

        def not_critical() -> None:
            with layout.net.inside(victim):
                broker.wait_not_quorum_critical(node)

        await asyncio.to_thread(not_critical)
        run.note(f"connections per broker host {before}")
        survivor = next(f"broker{i}" for i in (1, 2, 3) if f"broker{i}" != victim)
        killed_at = time.monotonic()
        pids = await asyncio.to_thread(layout.kill_host, victim)
        node.process = None
        run.note(f"{victim} killed ({len(pids)} processes: its node and epmd)")
        stale = asyncio.create_task(asyncio.to_thread(_offline_queues, hosts, survivor, killed_at))
        acked_before = sum(line.acked for v in run.visitors for line in v.lines)
        deadline = time.monotonic() + 60
        while sum(line.acked for v in run.visitors for line in v.lines) < acked_before + len(run.visitors):
            assert time.monotonic() < deadline, "visitor lines stopped being acknowledged"
            await asyncio.sleep(0.1)
        figures["a line of every visitor acknowledged since, s after the kill"] = round(time.monotonic() - killed_at, 2)
        await asyncio.sleep(STEADY_S)
        names, gone_at = await stale
        figures["queues of the dead node the cluster still listed (down)"] = names
        figures["... until, s after the kill"] = round(gone_at - killed_at, 2)
        after = await asyncio.to_thread(_connections, hosts)
        run.note(f"connections per surviving broker host {after}")
        figures["connections per broker host before"] = before
        figures["connections per surviving broker host after"] = after
        assert victim not in after and sum(after.values()) >= sum(before.values()), (before, after)

        def restart() -> None:
            with layout.net.inside(victim):
                broker.start_node(node)
                broker.await_node(node)

        await asyncio.to_thread(restart)
        run.note(f"{victim} started again")

    # No operator line bounced or delayed: a channel that published to a quorum queue
    # whose leader had just died was nacked until the dead node came back (18-25 s),
    # before Bus published on a new channel after a nack (tests/cluster/test_rabbit_leader_gone.py).
    run, count = await _under_load(hosts, "broker host killed", fault)
    _report(figures, run, count)


async def test_the_redis_master_host_dies(hosts: Hosts) -> None:
    layout = hosts.layout
    sentinels = layout.redis
    assert sentinels is not None
    figures: dict[str, Any] = {}

    async def fault(run: Run) -> None:
        master = await asyncio.to_thread(sentinels.master)
        victim = layout.host_at(master.host)
        replica = next(server for server in sentinels.data if server is not master)
        await asyncio.to_thread(sentinels.wait_replica_in_sync, replica.port, 60)
        run.note(f"master on {victim}, replica on {layout.host_at(replica.host)} in sync")
        killed_at = time.monotonic()
        await asyncio.to_thread(layout.kill_host, victim)
        master.process = None
        run.note(f"{victim} killed")
        await asyncio.to_thread(sentinels.wait_for_new_master, master.port, 60)
        figures["Sentinels agree on the new master, s after the kill"] = round(time.monotonic() - killed_at, 2)
        run.note("Sentinels agree on the promoted replica")
        # Its restart policy: back empty on its host, as the replica of the master the
        # Sentinels name (tools/sentinel.py restart; started as a master, the Sentinels
        # made it a replica 8-18 s later); lines are acknowledged again once it has the
        # copy (WAIT 1).
        await asyncio.to_thread(sentinels.restart, master)
        await asyncio.to_thread(sentinels.wait_replica_in_sync, master.port, 60)
        figures["the restarted server an in-sync replica, s after the kill"] = round(time.monotonic() - killed_at, 2)
        run.note(f"{victim} back as the replica, in sync")
        # Until then a line's WAIT fails and the gateway retries it, for at most
        # HABLA_GATEWAY_LINE_RETRY_S (20 s): 2-3 s of it now (18-19 s when the Sentinels
        # had to turn the restarted server into a replica: a line could bounce).

    run, count = await _under_load(hosts, "Redis master host killed", fault)
    _report(figures, run, count)


async def test_a_frontend_host_dies(hosts: Hosts) -> None:
    layout = hosts.layout
    figures: dict[str, Any] = {}

    async def fault(run: Run) -> None:
        opened = sum(v.reconnects for v in run.visitors)
        killed_at = time.monotonic()
        pids = await asyncio.to_thread(layout.kill_host, "frontend1")
        run.note(f"frontend1 killed ({len(pids)} processes: rpc_frontend, status_image)")
        # Round robin put about half the WebSockets there: they open again, on frontend2.
        deadline = time.monotonic() + 60
        while sum(v.reconnects for v in run.visitors) == opened:
            assert time.monotonic() < deadline, "no WebSocket was on frontend1 (or none came back)"
            await asyncio.sleep(0.1)
        figures["first WebSocket open again, s after the kill"] = round(time.monotonic() - killed_at, 2)
        await asyncio.sleep(STEADY_S)
        figures["WebSockets opened again"] = sum(v.reconnects for v in run.visitors) - opened
        code, kind, _ = await asyncio.to_thread(
            _get, f"{hosts.settings.status_public_url}/status/{hosts.sites[0].id}/image.png"
        )
        assert (code, kind) == (200, "image/png")  # the status image too, from frontend2
        await asyncio.to_thread(layout.revive, "frontend1")
        run.note("frontend1 started again")

    await _under_load(hosts, "frontend host killed", fault)
    print(json.dumps(figures, indent=1))
