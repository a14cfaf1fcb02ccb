"""Poison for every consumer queue, fed to the real services running as processes.

For each queue a consumer reads (the gateway's, the worker's four, a frontend's own
delivery queue): garbage bytes, no or unknown type, the wrong struct type, every
numeric field at 0, -1, the type's maximum and minimum, absurd strings (100k
characters, controls, invalid UTF-8), non-numeric retry headers, an oversized body.
Asserts: whatever cannot be handled lands in the queue's dead-letter queue with the
reason in ``x-habla-reason``; nothing stays unacknowledged; every service is alive and
healthy afterwards; resident memory stays bounded. Prints the counts.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from libs.common import codec, plausible, topology
from libs.common.messaging import ATTEMPT_HEADER, MAX_BODY_BYTES, REASON_HEADER, Bus
from libs.common.settings import Settings
from tests.chaos.stack import HEALTH_PORTS, Stack, running_stack

UNKNOWN_SITE = "0000-00000-00-0000"
I64 = (2**63 - 1, -(2**63))
I32 = (2**31 - 1, -(2**31))
# Kinds that no consumer can handle: each must be dead-lettered with a reason.
MUST_DIE = {"garbage", "untyped", "unknown-type", "wrong-type", "negative", "max", "min", "bad-utf8", "oversized"}
# Memory a service may gain from a few hundred poison messages (one of them 16 MiB).
RSS_GROWTH_LIMIT_KIB = 150 * 1024


def _sample(name: str) -> Any:
    """A well-formed struct of each type, for a site that does not exist."""
    now = int(time.time() * 1000)
    line = dict(
        message_id="m-poison",
        conversation_id="c-poison",
        site_id=UNKNOWN_SITE,
        visitor_id="v-poison",
        sender=codec.SenderKind.VISITOR,
        body="hello",
        sent_at_ms=now,
        seq=1,
    )
    action = dict(
        action_id="a-poison",
        conversation_id="c-poison",
        site_id=UNKNOWN_SITE,
        visitor_id="v-poison",
        operator_jid="op@localhost",
        action="end",
        at_ms=now,
    )
    samples: dict[str, Any] = {
        "ChatMessage": lambda: codec.ChatMessage(**line),
        "PageView": lambda: codec.PageView(
            visitor_id="v", site_id=UNKNOWN_SITE, url="https://x.example/", viewed_at_ms=now
        ),
        "VisitorEvent": lambda: codec.VisitorEvent(
            visitor_id="v", site_id=UNKNOWN_SITE, kind=6, at_ms=now, conversation_id="c"
        ),
        "OperatorAction": lambda: codec.OperatorAction(**action),
        "ConversationClosed": lambda: codec.ConversationClosed(
            conversation_id="c-poison", site_id=UNKNOWN_SITE, visitor_id="v", reason=1, last_seq=3, closed_at_ms=now
        ),
        "Transcript": lambda: codec.Transcript(
            conversation_id="c-poison", site_id=UNKNOWN_SITE, visitor_id="v", pages=[],
            messages=[codec.ChatMessage(**line)], operator_jids=[], started_at_ms=now, closed_at_ms=now, reason=3,
        ),
        "OfflineMessage": lambda: codec.OfflineMessage(
            message_id="o-poison", site_id=UNKNOWN_SITE, visitor_id="v", name="n", email="a@b.example", body="b",
            sent_at_ms=now,
        ),
        "VisitorDelivery": lambda: codec.VisitorDelivery(
            visitor_id="v", site_id=UNKNOWN_SITE, conversation_id="c", message=codec.ChatMessage(**line),
            site_status=codec.SiteStatus(site_id=UNKNOWN_SITE, online=True, operators_available=1, at_ms=now),
        ),
        "SiteStatus": lambda: codec.SiteStatus(site_id=UNKNOWN_SITE, online=True, operators_available=1, at_ms=now),
    }  # fmt: skip
    return samples[name]()


def _numeric_variants(struct: Any, path: str = "") -> list[tuple[str, str, Any]]:
    """(kind, field path, struct) for every integer field at 0, -1, max and min."""
    variants: list[tuple[str, str, Any]] = []
    for spec in type(struct).thrift_spec.values():
        ttype, name = spec[0], spec[1]
        value = getattr(struct, name)
        if value is None:
            continue
        if ttype == 12:  # a nested struct: vary its fields inside a fresh copy
            for kind, inner_path, inner in _numeric_variants(value, f"{path}{name}."):
                copy = _clone(struct)
                setattr(copy, name, inner)
                variants.append((kind, inner_path, copy))
        elif ttype in (8, 10):
            high, low = I64 if ttype == 10 else I32
            for kind, number in (("zero", 0), ("negative", -1), ("max", high), ("min", low)):
                copy = _clone(struct)
                setattr(copy, name, number)
                variants.append((kind, f"{path}{name}", copy))
    return variants


def _clone(struct: Any) -> Any:
    return codec.decode(codec.type_name(struct), codec.encode(struct))


def _string_variants(struct: Any) -> list[tuple[str, str, bytes]]:
    """Absurd strings in every string field: huge, control characters, invalid UTF-8."""
    out: list[tuple[str, str, bytes]] = []
    for spec in type(struct).thrift_spec.values():
        if spec[0] != 11 or getattr(struct, spec[1]) is None:
            continue
        huge = _clone(struct)
        setattr(huge, spec[1], ("\x00\x01\x7f<&>\u202e\U0001f600" * 12_500)[:100_000])
        out.append(("strings", spec[1], codec.encode(huge)))
        marked = _clone(struct)
        setattr(marked, spec[1], "MARKMARK")
        # "\xed\xa0\x80" is a UTF-8-encoded lone surrogate: invalid UTF-8.
        out.append(("bad-utf8", spec[1], codec.encode(marked).replace(b"MARKMARK", b"\xed\xa0\x80\xff\xfe\x00zz")))
    return out


def _poison_for(queue: str, accepts: frozenset[str]) -> list[tuple[str, aio_pika.Message]]:
    found: list[tuple[str, aio_pika.Message]] = []

    def add(kind: str, body: bytes, type_name: str | None, headers: dict[str, Any] | None = None) -> None:
        found.append(
            (
                kind,
                aio_pika.Message(
                    body,
                    type=type_name,
                    message_id=f"poison.{queue}.{kind}.{len(found)}",
                    headers=headers or {},
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
            )
        )

    for name in sorted(accepts):
        add("garbage", os.urandom(64), name)
        add("garbage", b"", name)
        add("garbage", b"\x19\xff\xff\xff\xff\x0f" + b"\x00" * 10, name)  # a list claiming 2^32 elements
        for kind, _path, struct in _numeric_variants(_sample(name)):
            try:
                add(kind, codec.encode(struct), name)
            except ValueError:
                continue
        for kind, _field, body in _string_variants(_sample(name)):
            add(kind, body, name)
        sample = codec.encode(_sample(name))
        for attempt in ("abc", "-1", "9" * 40, "\u0661", 1.5, True, -7, [1], {"x": 1}):
            add("header", sample, name, {ATTEMPT_HEADER: attempt})
    add("untyped", codec.encode(_sample(sorted(accepts)[0])), None)
    add("unknown-type", b"\x00", "NoSuchStruct\x00\u202e")
    wrong = next(n for n in ("SiteStatus", "Transcript", "ChatMessage") if n not in accepts)
    add("wrong-type", codec.encode(_sample(wrong)), wrong)
    add("oversized", b"\x00" * (MAX_BODY_BYTES + 1), sorted(accepts)[0])
    return found


def _vhost(settings: Settings) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(settings.amqp_url).path.lstrip("/"))


def _queue_depths(settings: Settings) -> dict[str, int]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", _vhost(settings), "name", "messages", "--formatter", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {row["name"]: int(row["messages"]) for row in json.loads(out)}


async def _drained(settings: Settings, within: float = 180.0) -> dict[str, int]:
    """Wait until every queue but the dead-letter ones is empty (settled, not parked)."""
    deadline = time.monotonic() + within
    while True:
        depths = await asyncio.to_thread(_queue_depths, settings)
        busy = {name: n for name, n in depths.items() if n and not name.endswith(".dead")}
        if not busy:
            return depths
        assert time.monotonic() < deadline, f"messages never settled: {busy}"
        await asyncio.sleep(1.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_poison_in_every_queue_is_dead_lettered_with_a_reason(settings: Settings, artifacts: Path) -> None:
    async with running_stack(settings, artifacts, "poison", amqp_retry_delays_ms="100,200") as stack:
        await _run(stack)


async def _run(stack: Stack) -> None:
    for name in HEALTH_PORTS:
        stack.start(name)
    for name in HEALTH_PORTS:
        await stack.wait_healthy(name)
    s = stack.settings
    rss_before = {name: stack.rss_kib(name) for name in HEALTH_PORTS}
    # The gateway's queues are named after its component domain (declared when it starts).
    domain = s.xmpp_component_domain
    specs = [*topology.WORK_QUEUES, topology.gateway_visitor_queue(domain), topology.gateway_conversation_queue(domain)]
    queues = [(spec.name, spec.accepts, spec.dead_letter_queue) for spec in specs]
    delivery = topology.frontend_delivery_queue(s.frontend_id)
    queues.append((delivery.name, delivery.accepts, delivery.dead_letter_queue))

    bus = await Bus.connect(s, "poison")
    sent: dict[str, str] = {}  # message id -> kind
    per_queue: dict[str, collections.Counter[str]] = {}
    try:
        for queue, accepts, _dead in queues:
            per_queue[queue] = collections.Counter()
            for kind, message in _poison_for(queue, accepts):
                await bus.publish_raw("", queue, message, mandatory=True)
                sent[str(message.message_id)] = kind
                per_queue[queue][kind] += 1
        depths = await _drained(s)

        dead: dict[str, str] = {}  # message id -> reason
        channel = await bus.connection.channel()
        for dead_queue in sorted({d for _q, _a, d in queues}):
            reader = await channel.get_queue(dead_queue)
            while (letter := await reader.get(fail=False, no_ack=True)) is not None:
                headers = letter.headers or {}
                reason = headers.get(REASON_HEADER) or ("x-death" in headers and "delivery limit") or ""
                dead[str(letter.message_id)] = str(reason)
    finally:
        await bus.close()

    rss_after = {name: stack.rss_kib(name) for name in HEALTH_PORTS}
    health = {name: await asyncio.to_thread(stack.healthz, name) for name in HEALTH_PORTS}
    outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for message_id, kind in sent.items():
        outcomes[kind]["dead-lettered" if message_id in dead else "handled"] += 1
    print("\npoison sent per queue:", {q: sum(c.values()) for q, c in per_queue.items()})
    print("outcomes by kind:", {k: dict(v) for k, v in sorted(outcomes.items())})
    print("dead-letter queue depths:", {q: n for q, n in depths.items() if q.endswith(".dead")})
    print("RSS KiB before → after:", {n: f"{rss_before[n]} → {rss_after[n]}" for n in HEALTH_PORTS})
    print("healthz:", health)

    assert all(stack.alive(name) for name in HEALTH_PORTS), "a service died"
    assert health == dict.fromkeys(HEALTH_PORTS, 200)
    must_die = [m for m, kind in sent.items() if kind in MUST_DIE]
    assert [m for m in must_die if m not in dead] == []
    assert [m for m, reason in dead.items() if m in sent and not reason] == [], "dead letters without a reason"
    for name in HEALTH_PORTS:
        assert rss_after[name] - rss_before[name] < RSS_GROWTH_LIMIT_KIB, (name, rss_before, rss_after)
    assert plausible.MAX_SEQ < 2**63 - 1  # the bound that refused the huge numbers above
