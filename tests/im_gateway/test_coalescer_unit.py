"""PresenceCoalescer as pure logic: a fake clock and a recording outbox."""

from __future__ import annotations

from services.im_gateway.coalescer import PresenceCoalescer
from services.im_gateway.outbox import XmppUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str | None, str | None]] = []
        self.down = False

    def presence(self, sender, to, *, show=None, status=None, kind=None) -> None:
        if self.down:
            raise XmppUnavailable("down")
        self.sent.append((sender, to, status, kind))

    def chat(self, sender, to, body, *, stanza_id=None, request_receipt=False, state=None) -> None:
        raise AssertionError("no chat expected")

    def chat_state(self, sender, to, state) -> None:
        raise AssertionError("no chat state expected")

    def receipt(self, sender, to, stanza_id) -> None:
        raise AssertionError("no receipt expected")


def make(interval: float = 2.0, ceiling: int = 5) -> tuple[PresenceCoalescer, Recorder, Clock]:
    clock, outbox = Clock(), Recorder()
    return PresenceCoalescer(outbox, interval, ceiling, clock), outbox, clock


def test_latest_update_wins() -> None:
    coalescer, outbox, _ = make()
    for page in ("/a", "/b", "/c"):
        coalescer.update("op@x", "v1@chat", status=page)
    assert coalescer.flush() == 1
    assert outbox.sent == [("v1@chat", "op@x", "/c", None)]


def test_one_update_per_sender_per_interval_and_the_latest_arrives() -> None:
    coalescer, outbox, clock = make(interval=2.0)
    coalescer.update("op@x", "v1@chat", status="/1")
    coalescer.flush()
    clock.now += 0.5
    coalescer.update("op@x", "v1@chat", status="/2")
    coalescer.update("op@x", "v1@chat", status="/3")
    assert coalescer.flush() == 0
    clock.now += 1.5  # one interval after the first send
    assert coalescer.flush() == 1
    assert [s[2] for s in outbox.sent] == ["/1", "/3"]


def test_ceiling_per_operator_per_second_in_any_window() -> None:
    coalescer, outbox, clock = make(interval=0.1, ceiling=5)
    for i in range(20):
        coalescer.update("op@x", f"v{i}@chat", status=f"/{i}")
        coalescer.update("other@x", f"v{i}@chat", status=f"/{i}")
    assert coalescer.flush() == 10  # 5 for each operator: the ceiling is per operator
    times = [clock.now] * 5
    while coalescer.pending("op@x"):
        clock.now += 0.05
        before = len([s for s in outbox.sent if s[1] == "op@x"])
        coalescer.flush()
        times += [clock.now] * (len([s for s in outbox.sent if s[1] == "op@x"]) - before)
    assert len(times) == 20
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t - start < 1.0) <= 5
    # Oldest waiting first: senders go out in the order they started waiting.
    assert [s[2] for s in outbox.sent if s[1] == "op@x"] == [f"/{i}" for i in range(20)]


def test_updates_wait_while_the_stream_is_down() -> None:
    coalescer, outbox, clock = make()
    outbox.down = True
    coalescer.update("op@x", "v1@chat", status="/a")
    assert coalescer.flush() == 0 and coalescer.pending("op@x") == 1
    outbox.down = False
    clock.now += 0.05
    assert coalescer.flush() == 1 and outbox.sent[0][2] == "/a"


def test_forget_drops_a_pending_update() -> None:
    coalescer, outbox, _ = make()
    coalescer.update("op@x", "v1@chat", status="/a")
    coalescer.forget("op@x", "v1@chat")
    assert coalescer.flush() == 0 and outbox.sent == []
