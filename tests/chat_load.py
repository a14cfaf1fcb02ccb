"""Steady chat load both ways, and the accounting of what got where: one copy for the
chaos test (tests/chaos), the cluster tests on loopback and on network-namespace hosts
(tests/cluster).

Visitors do what the widget does: send over HTTP with retries of the same message id,
receive by long-poll (``receive``) or over a WebSocket (``receive_ws``) from their
cursor, showing each seq and each message id once. Operators are real XMPP clients
(strict: no automatic authorisation or subscription) that answer every visitor they
have heard from, asking for receipts. ``tally`` counts what was acknowledged and where
it went; the tests assert on its counts and print its report.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import random
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
import tornado.httpclient
import tornado.websocket

from libs.common.db import messages
from libs.common.settings import Settings
from services.im_gateway import voice
from services.im_gateway.takeover_notice import LEAD
from tests.im_gateway.operator_client import OperatorClient

ORIGIN = "http://127.0.0.1"
OPERATOR_LINE_EVERY_S = 0.2  # per operator, spread over the visitors it talks to
RESTART_NOTICE = voice.PREFIX + LEAD


@dataclasses.dataclass
class VisitorLine:
    message_id: str
    body: str
    acked: bool = False
    answers: list[int] = dataclasses.field(default_factory=list)  # HTTP codes, 0 = no answer


class Visitor:
    """What the widget does, over HTTP: send with retries, long-poll (or a WebSocket)
    from a cursor."""

    def __init__(self, index: int, site_id: str, base: str, client: tornado.httpclient.AsyncHTTPClient) -> None:
        self.index, self.site_id = index, site_id
        self.base = base
        self.api = f"{base}/api/sites/{site_id}"
        self.client = client
        self.token = ""
        self.conversation_id = ""
        self.after = 0
        self.lines: list[VisitorLine] = []
        self.shown: collections.Counter[str] = collections.Counter()  # body -> times shown
        self.seen_ids: set[str] = set()
        self.offered_again = 0  # entries whose message id was already shown
        self.poll_errors: collections.Counter[int] = collections.Counter()
        self.reconnects = 0  # WebSockets opened again after the first

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        try:
            response = await self.client.fetch(
                self.api + path,
                method=method,
                body=json.dumps(body) if body is not None else None,
                headers={"Origin": ORIGIN},
                raise_error=False,
                request_timeout=40,
            )
        except (OSError, tornado.httpclient.HTTPClientError):
            # Refused, reset or cut mid-answer (a frontend SIGKILLed): no answer.
            return 0, {}
        try:
            return response.code, json.loads(response.body or b"{}")
        except ValueError:
            return response.code, {}

    async def start(self) -> None:
        for _ in range(100):
            code, data = await self.call(
                "POST", "/session", {"token": "", "page": {"url": f"{ORIGIN}/shop", "title": "Shop"}}
            )
            if code == 200:
                self.token = data["token"]
                return
            await asyncio.sleep(0.5)
        raise AssertionError("no session")

    async def load(self, stop: asyncio.Event, every_s: float) -> None:
        """This visitor's steady share of the load: line after line until ``stop``."""
        for n in itertools.count():
            if stop.is_set():
                return
            await self.send(n)
            await asyncio.sleep(every_s)

    async def send(self, n: int) -> None:
        line = VisitorLine(uuid.uuid4().hex, f"v{self.index}-{n}")
        self.lines.append(line)
        delay = 0.5
        while True:
            code, _ = await self.call(
                "POST", "/messages", {"token": self.token, "message_id": line.message_id, "body": line.body}
            )
            line.answers.append(code)
            if code == 200:
                line.acked = True
                return
            if code == 401:  # session lost with Redis data: a new visit, same line id
                await self.start()
            # 503 (+ Retry-After), a dead frontend (0) or anything else: back off, same id.
            await asyncio.sleep(delay + random.random() * 0.2)
            delay = min(delay * 2, 4.0)

    def take(self, event: dict[str, Any]) -> None:
        """One "entries" event, as the widget shows it."""
        if event.get("type") != "entries":
            return
        if event.get("conversation_id") != self.conversation_id:
            self.conversation_id, self.after = event.get("conversation_id") or "", 0
        for entry in event.get("entries", []):
            if entry.get("seq", 0) <= self.after:
                continue  # the widget never shows a seq twice
            self.after = entry["seq"]
            # As the widget does: a line put back under a new seq after Redis lost data
            # has the same message id, and is shown once.
            message_id = entry.get("message_id", "")
            if message_id in self.seen_ids:
                self.offered_again += 1
                continue
            self.seen_ids.add(message_id)
            if entry.get("kind") == "message":
                self.shown[entry.get("body", "")] += 1

    def _cursor(self, data: dict[str, Any]) -> None:
        """Where the server says the conversation stands (a poll's answer, "synced")."""
        if data.get("conversation_id") != self.conversation_id:
            self.conversation_id, self.after = data.get("conversation_id") or "", int(data.get("after") or 0)
        else:
            self.after = max(self.after, int(data.get("after") or 0))

    async def receive(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            code, data = await self.call(
                "GET", f"/poll?token={self.token}&conversation_id={self.conversation_id}&after={self.after}"
            )
            if code != 200:
                self.poll_errors[code] += 1
                await asyncio.sleep(0.5)
                continue
            for event in data.get("events", []):
                self.take(event)
            self._cursor(data)

    async def receive_ws(self, stop: asyncio.Event) -> None:
        """Over a WebSocket; when it drops (its frontend died), a new one resumes from the
        cursor on whichever frontend the load balancer picks, as the widget does."""
        opened = 0
        ws_base = self.base.replace("http", "ws", 1)
        while not stop.is_set():
            query = f"token={self.token}&conversation_id={self.conversation_id}&after={self.after}"
            request = tornado.httpclient.HTTPRequest(
                f"{ws_base}/api/sites/{self.site_id}/ws?{query}", headers={"Origin": ORIGIN}, request_timeout=10
            )
            try:
                socket = await tornado.websocket.websocket_connect(request)
            except (OSError, tornado.httpclient.HTTPClientError, tornado.websocket.WebSocketError):
                self.poll_errors[0] += 1
                await asyncio.sleep(0.5)
                continue
            opened += 1
            self.reconnects = opened - 1
            try:
                while not stop.is_set():
                    try:
                        raw = await asyncio.wait_for(socket.read_message(), 1.0)
                    except TimeoutError:
                        continue  # look at stop again
                    if raw is None:
                        self.poll_errors[socket.close_code or 0] += 1
                        break
                    event = json.loads(raw)
                    if event.get("type") == "synced":
                        self._cursor(event)
                    else:
                        self.take(event)
            finally:
                socket.close()
            await asyncio.sleep(0.2)


class Operator:
    """A real XMPP client answering its site's visitors, asking for receipts."""

    def __init__(self, client: OperatorClient, site_id: str = "") -> None:
        self.client = client
        self.site_id = site_id
        self.visitor_jids: dict[int, str] = {}  # visitor index -> bare JID
        self.sent: dict[str, int] = {}  # stanza id (= body) -> visitor index
        self.sent_at: dict[str, float] = {}  # stanza id -> time.monotonic() when sent
        self.counter = itertools.count()

    def learn(self) -> None:
        for item in self.client.received:
            if item.kind == "message" and item.body.startswith("v") and "-" in item.body:
                index = int(item.body[1:].split("-")[0])
                self.visitor_jids.setdefault(index, item.sender.split("/")[0])

    async def talk(self, stop: asyncio.Event, every_s: float = OPERATOR_LINE_EVERY_S) -> None:
        while not stop.is_set():
            self.learn()
            for index, jid in list(self.visitor_jids.items()):
                if stop.is_set():
                    break
                body = f"o{index}-{next(self.counter)}"
                self.sent[body] = index
                self.sent_at[body] = time.monotonic()
                self.client.say(jid, body, stanza_id=body, receipt=True)
                await asyncio.sleep(every_s)
            await asyncio.sleep(0.05)

    def notices(self) -> list[tuple[str, float]]:
        """(visitor bare JID, when received) of every restart notice: a gateway took over
        from one that died and asked to resend unreceipted lines (issue 11)."""
        return [
            (r.sender.split("/")[0], r.at)
            for r in self.client.received
            if r.kind == "message" and not r.error and r.body.startswith(RESTART_NOTICE)
        ]

    def covered(self, body: str) -> bool:
        """Whether a restart notice reached this operator, in that visitor's window, after
        ``body`` was sent: the operator was told to resend it if it shows no receipt."""
        jid = self.visitor_jids.get(self.sent[body])
        return any(sender == jid and at > self.sent_at[body] for sender, at in self.notices())

    def errors(self) -> set[str]:
        return {r.stanza_id for r in self.client.received if r.kind == "message" and r.error}

    def bodies(self) -> collections.Counter[str]:
        """Times each line is shown. Like a client, a message repeated under the same
        stanza id (a gateway that died between sending it and marking it sent sends it
        again, on purpose) is shown once."""
        shown = {(r.body, r.stanza_id) for r in self.client.received if r.kind == "message" and not r.error}
        return collections.Counter(body for body, _ in shown)


def vhost(settings: Settings) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(settings.amqp_url).path.lstrip("/")) or "/"


async def until(predicate: Callable[[], bool], within: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)
    return True


def operators_of(visitor: Visitor, operators: Sequence[Operator]) -> list[Operator]:
    """The operators who got any of the visitor's lines (the one its conversation is
    assigned to; more than one if it changed operator)."""
    prefix = f"v{visitor.index}-"
    return [o for o in operators if any(body.startswith(prefix) for body in o.bodies())]


def settled(
    visitors: Sequence[Visitor],
    operators: Sequence[Operator],
    excused: Callable[[Operator, str], bool] | None = None,
) -> bool:
    """Every acknowledged visitor line at an operator, every receipted operator line shown
    and, with ``excused``, every operator line answered (receipt or error) but those it
    excuses (a gateway may still be retrying one for HABLA_GATEWAY_LINE_RETRY_S; one its
    SIGKILL took gets no answer at all, only a restart notice)."""
    for visitor in visitors:
        at = collections.Counter[str]()
        for operator in operators_of(visitor, operators):
            at.update(operator.bodies())
        if any(line.acked and line.body not in at for line in visitor.lines):
            return False
    by_index = {v.index: v for v in visitors}
    for operator in operators:
        for body, index in operator.sent.items():
            if body in operator.client.receipts and not by_index[index].shown[body]:
                return False
        if excused is not None:
            errors = operator.errors()
            for body in operator.sent:
                if body not in operator.client.receipts and body not in errors and not excused(operator, body):
                    return False
    return True


def archived(engine: sa.Engine) -> tuple[set[str], int]:
    """Every archived line's body, and how many (conversation, seq) pairs two lines hold."""
    with engine.connect() as conn:
        bodies = {r.body for r in conn.execute(sa.select(messages.c.body))}
        shared_seq = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM (SELECT conversation_id, seq FROM messages WHERE seq > 0"
                " GROUP BY conversation_id, seq HAVING COUNT(*) > 1) d"
            )
        ).scalar()
    return bodies, int(shared_seq or 0)


@dataclasses.dataclass
class Tally:
    """What was acknowledged, and where it went. Visitors are indexed by ``index``."""

    visitor_lines: list[VisitorLine]
    acked: list[VisitorLine]
    not_at_operator: list[str]  # acknowledged visitor lines no operator of the site got
    twice_at_operator: list[str]  # visitor lines an operator was shown twice
    changed_operator: list[int]  # visitors whose lines reached more than one operator
    operator_sent: dict[str, int]  # body -> visitor index
    receipted: set[str]
    bounced: set[str]
    silent: list[str]  # operator lines with neither receipt nor error
    not_shown: list[str]  # receipted operator lines the visitor never showed
    shown_twice: list[str]  # lines a visitor showed twice
    not_archived: list[str]  # acknowledged lines (either side) not in MySQL

    def report(self, visitors: Sequence[Visitor]) -> dict[str, Any]:
        return {
            "visitor lines sent": len(self.visitor_lines),
            "visitor lines acknowledged (200)": len(self.acked),
            "visitor answers by HTTP code": dict(
                collections.Counter(c for line in self.visitor_lines for c in line.answers)
            ),
            "acknowledged visitor lines not at the operator": len(self.not_at_operator),
            "visitor lines shown twice to an operator": len(self.twice_at_operator),
            "conversations that changed operator": len(self.changed_operator),
            "operator lines sent": len(self.operator_sent),
            "operator lines receipted": len(self.receipted),
            "operator lines bounced with an error": len(self.bounced),
            "operator lines with neither receipt nor error": len(self.silent),
            "receipted operator lines never shown to the visitor": len(self.not_shown),
            "lines shown twice to a visitor": len(self.shown_twice),
            "lines offered again under a new seq (same id, shown once)": sum(v.offered_again for v in visitors),
            "acknowledged lines not archived": len(self.not_archived),
        }

    def examples(self) -> dict[str, list[Any]]:
        return {
            "not at operator": self.not_at_operator[:10],
            "operator got twice": self.twice_at_operator[:10],
            "changed operator": self.changed_operator[:10],
            "bounced": sorted(self.bounced)[:10],
            "silent": self.silent[:10],
            "not shown": self.not_shown[:10],
            "shown twice": self.shown_twice[:10],
            "not archived": self.not_archived[:10],
        }


def tally(
    visitors: Sequence[Visitor], operators: Sequence[Operator], archived_bodies: Iterable[str] | None = None
) -> Tally:
    """Count. ``operators``: every operator of every visitor's site (a visitor's lines
    must all reach one of them). ``archived_bodies``: MySQL's (None: not checked)."""
    visitor_lines = [line for v in visitors for line in v.lines]
    acked = [line for line in visitor_lines if line.acked]
    site_ops = {v.index: [o for o in operators if not o.site_id or o.site_id == v.site_id] for v in visitors}
    not_at_operator, changed = [], []
    for visitor in visitors:
        theirs = operators_of(visitor, site_ops[visitor.index])
        if len(theirs) > 1:
            changed.append(visitor.index)
        at = collections.Counter[str]()
        for operator in theirs:
            at.update(operator.bodies())
        not_at_operator += [line.body for line in visitor.lines if line.acked and line.body not in at]
    twice_at_operator = [b for o in operators for b, n in o.bodies().items() if n > 1 and b.startswith("v")]
    operator_sent = {body: index for o in operators for body, index in o.sent.items()}
    receipted = {body for o in operators for body in o.sent if body in o.client.receipts}
    bounced = {body for o in operators for body in o.sent if body in o.errors()}
    by_index = {v.index: v for v in visitors}
    not_shown = sorted(body for body in receipted if not by_index[operator_sent[body]].shown[body])
    shown_twice = sorted(b for v in visitors for b, n in v.shown.items() if n > 1)
    not_archived: list[str] = []
    if archived_bodies is not None:
        stored = set(archived_bodies)
        not_archived = [line.body for line in acked if line.body not in stored] + sorted(receipted - stored)
    return Tally(
        visitor_lines=visitor_lines,
        acked=acked,
        not_at_operator=not_at_operator,
        twice_at_operator=twice_at_operator,
        changed_operator=changed,
        operator_sent=operator_sent,
        receipted=receipted,
        bounced=bounced,
        silent=sorted(set(operator_sent) - receipted - bounced),
        not_shown=not_shown,
        shown_twice=shown_twice,
        not_archived=not_archived,
    )
