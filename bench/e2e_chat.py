"""Chat lines end to end: visitors on the frontend's WebSocket, operators on XMPP clients.

Visitors are what the widget is on the wire: POST /session, then the WebSocket,
``{"type": "send"}`` frames answered by ``"sent"``, operator lines arriving as
``"entries"``. Operators are slixmpp clients logged in to the stack's Prosody and
behaving like the strictest real client: they authorize no subscription by
themselves and subscribe to nobody.

Every line carries a unique body; its send time and its arrival time (on the other
side, in this same process) give latency; the first send and the last arrival of a
batch give lines/s.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tornado.httpclient
import tornado.websocket

from tests.im_gateway.operator_client import OperatorClient

# Lines an operator sends before yielding to the event loop, so slixmpp writes them out
# the way a client typing fast (or a paste) would, not one huge buffer at the end.
SEND_BURST = 50


class StrictOperator(OperatorClient):
    """An operator's XMPP client that accepts nothing by itself (Gajim, Dino, profanity …
    ask their user first); records each line's arrival time by body.

    ``accept`` is the person at the keyboard: the JIDs whose subscription request they
    accept when their client asks (the site bot's, once), adding the bot to their
    contacts as well, as Gajim's and Dino's "accept" do."""

    def __init__(self, jid: str, password: str, host: str, port: int, accept: tuple[str, ...] = ()) -> None:
        super().__init__(jid, password, host, port)
        self.xmpp.auto_authorize = False
        self.xmpp.auto_subscribe = False
        self.accept = accept
        self.arrived: dict[str, float] = {}
        self.xmpp.add_event_handler("presence_subscribe", self._on_subscribe)

    def _on_subscribe(self, presence: Any) -> None:
        if presence["from"].bare in self.accept:
            self.xmpp.send_presence(pto=presence["from"].bare, ptype="subscribed")
            self.xmpp.send_presence(pto=presence["from"].bare, ptype="subscribe")

    async def start(self, show: str | None = None) -> StrictOperator:
        await super().start(show)
        return self

    def _on_message(self, msg: Any) -> None:
        if msg["body"]:
            self.arrived[msg["body"]] = time.monotonic()
        super()._on_message(msg)


class Visitor:
    """One widget: a session and its WebSocket."""

    def __init__(self, index: int, token: str, visitor_id: str) -> None:
        self.index, self.token, self.visitor_id = index, token, visitor_id
        self.jid = ""  # learned from the operator's side
        self.operator: StrictOperator | None = None  # who the gateway routed the chat to
        self.ws: tornado.websocket.WebSocketClientConnection | None = None
        self.arrived: dict[str, float] = {}  # operator line body -> arrival
        self.accepted: dict[str, float] = {}  # own line body -> arrival of its "sent"
        self._bodies: dict[str, str] = {}  # message id -> body, until "sent"
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, ws_url: str) -> None:
        self.ws = await tornado.websocket.websocket_connect(f"{ws_url}?token={self.token}")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        while (raw := await self.ws.read_message()) is not None:
            event = json.loads(raw)
            if event["type"] == "sent":
                if (body := self._bodies.pop(event.get("message_id", ""), None)) is not None:
                    self.accepted[body] = time.monotonic()
                ack = self._acks.pop(event.get("message_id", ""), None)
                if ack is not None and not ack.done():
                    ack.set_result(None)
            elif event["type"] == "entries":
                now = time.monotonic()
                for entry in event["entries"]:
                    if entry.get("sender") == "operator":
                        self.arrived[entry["body"]] = now

    async def say(self, body: str, *, wait: bool = True) -> None:
        """Send a line; with ``wait``, until the frontend answers "sent" (logged and confirmed)."""
        assert self.ws is not None
        message_id = uuid.uuid4().hex
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if wait:
            self._acks[message_id] = ack
        self._bodies[message_id] = body
        await self.ws.write_message(json.dumps({"type": "send", "message_id": message_id, "body": body}))
        if wait:
            await asyncio.wait_for(ack, 60)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self._reader is not None:
            self._reader.cancel()


async def new_visitors(api: str, n: int) -> list[Visitor]:
    client = tornado.httpclient.AsyncHTTPClient()

    async def one(index: int) -> Visitor:
        body = json.dumps({"page": {"url": f"https://shop.example/p{index}", "title": f"Page {index}"}})
        data = json.loads((await client.fetch(f"{api}/session", method="POST", body=body)).body)
        return Visitor(index, data["token"], data["visitor_id"])

    visitors: list[Visitor] = []
    for start in range(0, n, 20):  # 20 at a time: a boot storm is measured elsewhere
        visitors += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 20))))
    return visitors


async def wait_until(done: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


async def pair(visitors: list[Visitor], operators: list[StrictOperator], within: float) -> None:
    """Each visitor writes once; whoever receives it is their operator, and the sender their JID."""
    tag = uuid.uuid4().hex[:6]
    for v in visitors:
        await v.say(f"hello {tag} {v.index}")

    def everyone_arrived() -> bool:
        return all(any(f"hello {tag} {v.index}" in op.arrived for op in operators) for v in visitors)

    await wait_until(everyone_arrived, within, "every visitor's first line at an operator")
    for v in visitors:
        for op in operators:
            for item in op.received:
                if item.kind == "message" and item.body == f"hello {tag} {v.index}":
                    v.jid, v.operator = item.sender.split("/")[0], op


@dataclass
class Lines:
    count: int
    seconds: float  # first send -> last arrival
    latencies_ms: list[float]
    accepted_s: float = 0.0  # visitor -> operator: first send -> last "sent" from the frontend
    sent_offsets_s: list[float] = field(default_factory=list)  # each line's send, from the first's
    sent_ms: list[float] = field(default_factory=list)  # visitor -> operator: send -> "sent" frame
    client_lag_ms: list[float] = field(default_factory=list)  # this process's event-loop lag, sampled

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def _lines(sent: dict[str, float], arrived: Callable[[str], float | None]) -> Lines:
    arrivals = {body: at for body in sent if (at := arrived(body)) is not None}
    latencies = [(arrivals[b] - sent[b]) * 1000 for b in arrivals]
    first = min(sent.values(), default=0.0)
    span = max(arrivals.values()) - first if arrivals else 0.0
    return Lines(len(arrivals), span, latencies, sent_offsets_s=[sent[b] - first for b in arrivals])


class LoopLag:
    """This process's event-loop lag while a phase runs (the bench client's own delays
    are in every latency it measures): a task asks to wake every ``TICK_S`` and records
    how late it woke, in ms."""

    TICK_S = 0.002

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.TICK_S)
            self.lags_ms.append((loop.time() - asked - self.TICK_S) * 1000)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def _at_operator(operators: list[StrictOperator]) -> Callable[[str], float | None]:
    def find(body: str) -> float | None:
        for op in operators:
            if body in op.arrived:
                return op.arrived[body]
        return None

    return find


def _at_visitor(visitors: list[Visitor]) -> Callable[[str], float | None]:
    def find(body: str) -> float | None:
        for v in visitors:
            if body in v.arrived:
                return v.arrived[body]
        return None

    return find


async def visitors_saturated(visitors: list[Visitor], operators: list[StrictOperator], per_visitor: int) -> Lines:
    """Every visitor sends back to back, each line once the previous one is "sent"."""
    tag = uuid.uuid4().hex[:6]
    sent: dict[str, float] = {}

    async def send_all(v: Visitor) -> None:
        for i in range(per_visitor):
            body = f"vo {tag} {v.index} {i}"
            sent[body] = time.monotonic()
            await v.say(body)

    first = time.monotonic()
    await asyncio.gather(*(send_all(v) for v in visitors))
    accepted_s = time.monotonic() - first
    total = len(visitors) * per_visitor
    found = _at_operator(operators)
    await wait_until(lambda: all(found(b) is not None for b in sent), 120, "visitor lines at the operators")
    lines = _lines(sent, found)
    lines.accepted_s = accepted_s
    assert lines.count == total
    return lines


async def operators_saturated(visitors: list[Visitor], lines_n: int) -> Lines:
    """Operators send ``lines_n`` lines round robin over their visitors, as fast as their client writes."""
    tag = uuid.uuid4().hex[:6]
    sent: dict[str, float] = {}
    for i in range(lines_n):
        v = visitors[i % len(visitors)]
        assert v.operator is not None
        body = f"ov {tag} {i}"
        sent[body] = time.monotonic()
        v.operator.say(v.jid, body)
        if i % SEND_BURST == SEND_BURST - 1:
            await asyncio.sleep(0)
    found = _at_visitor(visitors)
    await wait_until(lambda: all(found(b) is not None for b in sent), 120, "operator lines at the visitors")
    return _lines(sent, found)


async def paced(visitors: list[Visitor], operators: list[StrictOperator], rate: float, seconds: float) -> list[Lines]:
    """Open loop at ``rate`` lines/s each way at once (visitors and operators typing):
    latency without our own queueing. Returns [visitor -> operator, operator -> visitor]."""
    tag = uuid.uuid4().hex[:6]
    n = max(1, round(rate * seconds))
    to_operator: dict[str, float] = {}
    to_visitor: dict[str, float] = {}
    pending: list[asyncio.Task[None]] = []
    lag = LoopLag().__enter__()
    start = time.monotonic()
    for i in range(n):
        due = start + i / rate
        if (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        v = visitors[i % len(visitors)]
        body = f"pv {tag} {i}"
        to_operator[body] = time.monotonic()
        pending.append(asyncio.create_task(v.say(body, wait=False)))
        w = visitors[(i + len(visitors) // 2) % len(visitors)]
        assert w.operator is not None
        body = f"po {tag} {i}"
        to_visitor[body] = time.monotonic()
        w.operator.say(w.jid, body)
    await asyncio.gather(*pending)
    at_op, at_v = _at_operator(operators), _at_visitor(visitors)
    await wait_until(lambda: all(at_op(b) is not None for b in to_operator), 60, "paced lines at the operators")
    await wait_until(lambda: all(at_v(b) is not None for b in to_visitor), 60, "paced lines at the visitors")
    lag.__exit__()
    rows = [_lines(to_operator, at_op), _lines(to_visitor, at_v)]
    accepted = {b: t for v in visitors for b, t in v.accepted.items() if b in to_operator}
    rows[0].sent_ms = [(accepted[b] - to_operator[b]) * 1000 for b in accepted]
    for row in rows:
        row.client_lag_ms = lag.lags_ms
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
