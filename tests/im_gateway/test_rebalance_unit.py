"""The rebalancing plan (services.im_gateway.rebalance.plan): fair shares, one move at a
time, never a move out of a fair state (no oscillation), deterministic."""

from __future__ import annotations

import itertools
import random

from services.im_gateway.rebalance import Move, farewell, member_of, plan, shares


def _owners(counts: dict[str, int]) -> dict[int, str | None]:
    owners: dict[int, str | None] = {}
    n = 0
    for member, k in counts.items():
        for _ in range(k):
            owners[n] = member
            n += 1
    return owners


def _settle(members: list[str], owners: dict[int, str | None], pinned: frozenset[str] = frozenset()) -> list[Move]:
    """Apply moves until the plan has none; the moves made."""
    moves: list[Move] = []
    while (move := plan(members, owners, pinned)) is not None:
        assert owners[move.partition] == move.giver
        owners[move.partition] = move.receiver
        moves.append(move)
        assert len(moves) <= len(owners), "moves never end"
    return moves


def test_a_third_gateway_gets_its_share_of_eight() -> None:
    owners = _owners({"a": 4, "b": 4, "c": 0})
    moves = _settle(["a", "b", "c"], owners)
    counts = sorted(list(owners.values()).count(m) for m in "abc")
    assert counts == [2, 3, 3]
    assert len(moves) == 2 and all(m.receiver == "c" for m in moves)
    # Deterministic: the giver holding most (lowest id on ties), its highest partition.
    assert moves[0] == Move(3, "a", "c")


def test_a_fair_state_is_left_alone() -> None:
    for counts in ({"a": 3, "b": 3, "c": 2}, {"a": 2, "b": 3, "c": 3}, {"a": 2, "b": 2, "c": 2, "d": 2}):
        assert plan(sorted(counts), _owners(counts)) is None
    assert plan(["a", "b"], _owners({"a": 1, "b": 0})) is None  # P = 1: nothing to share


def test_every_state_settles_fair_in_few_moves_and_stays_there() -> None:
    rng = random.Random(7)
    for _ in range(500):
        n = rng.randint(1, 5)
        p = rng.randint(1, 12)
        members = [f"m{k}" for k in range(n)]
        owners: dict[int, str | None] = {k: rng.choice(members) for k in range(p)}
        moves = _settle(members, owners)
        floor, ceil = shares(p, n)
        counts = [list(owners.values()).count(m) for m in members]
        assert all(floor <= c <= ceil for c in counts), (counts, floor, ceil)
        # Each move takes from a member holding at least two more than the receiver.
        assert len(moves) <= p
        assert plan(members, owners) is None


def test_nothing_moves_while_a_partition_is_free_or_held_by_a_dead_member() -> None:
    owners = _owners({"a": 5, "b": 0})
    owners[5] = None
    assert plan(["a", "b"], owners) is None
    owners[5] = "dead"
    assert plan(["a", "b"], owners) is None


def test_pinned_members_neither_give_nor_receive() -> None:
    owners = _owners({"pin": 4, "a": 4, "b": 0})
    pinned = frozenset({"pin"})
    _settle(["a", "b", "pin"], owners, pinned)
    assert list(owners.values()).count("pin") == 4
    assert sorted(list(owners.values()).count(m) for m in "ab") == [2, 2]


def test_a_graceful_stop_spreads_its_partitions_over_the_others() -> None:
    owners = _owners({"a": 3, "b": 3, "c": 2})
    handoffs = farewell("a", ["a", "b", "c"], owners)
    assert sorted(handoffs) == [0, 1, 2]
    after = dict(owners) | handoffs
    assert sorted(list(after.values()).count(m) for m in "bc") == [4, 4]
    assert farewell("a", ["a"], owners) == {}


def test_member_of_a_lease_token() -> None:
    assert member_of("host:123:abcdef") == "host:123"
    assert member_of(None) is None
    assert {member_of(f"h:{pid}:x") for pid, _ in itertools.product((1, 2), range(2))} == {"h:1", "h:2"}
