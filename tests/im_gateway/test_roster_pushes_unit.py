"""RosterPushes: coalescing and the per-operator ceiling, with a fake clock and writer."""

from __future__ import annotations

import asyncio
from xml.etree import ElementTree as ET

from services.im_gateway.roster_pushes import Item, RosterPushes
from services.im_gateway.rosters import first_condition


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _item(n: int, site: str = "s") -> Item:
    return Item(f"v{n}@chat.test", f"v{n}", "Shop — visitors", site)


async def test_at_most_the_ceiling_per_operator_per_second_and_latest_state_wins() -> None:
    clock = Clock()
    written: list[tuple[str, str, Item | None]] = []

    async def write(operator: str, jid: str, item: Item | None) -> None:
        written.append((operator, jid, item))

    pushes = RosterPushes(write, ceiling_per_s=5, clock=clock)
    for n in range(20):
        pushes.want("a@x", f"v{n}@chat.test", _item(n))
        pushes.want("b@x", f"v{n}@chat.test", _item(n))
    # A visitor who came and went before the flush costs one write (the removal), not two.
    pushes.want("a@x", "v0@chat.test", None)
    assert pushes.flush() == 10  # 5 for each operator
    await asyncio.sleep(0)
    assert len([w for w in written if w[0] == "a@x"]) == 5
    assert ("a@x", "v0@chat.test", None) in written
    clock.now = 0.5
    assert pushes.flush() == 0  # the window has not moved on
    clock.now = 1.0
    assert pushes.flush() == 10
    clock.now = 10.0
    while pushes.flush():
        await asyncio.sleep(0)
        clock.now += 1.0
    await asyncio.sleep(0)
    assert len(written) == 40
    assert pushes.pending("a@x") == 0


async def test_one_write_per_contact_in_flight_and_pending_additions_by_site() -> None:
    clock = Clock()
    release = asyncio.Event()

    async def write(_operator: str, _jid: str, _item: Item | None) -> None:
        await release.wait()

    pushes = RosterPushes(write, ceiling_per_s=100, clock=clock)
    pushes.want("a@x", "v1@chat.test", _item(1))
    assert pushes.flush() == 1
    await asyncio.sleep(0)
    pushes.want("a@x", "v1@chat.test", None)  # must not overtake the write on the wire
    pushes.want("a@x", "v2@chat.test", _item(2, site="other"))
    assert pushes.busy("a@x", "v1@chat.test")
    assert pushes.pending_additions("a@x", "other") == {"v2@chat.test"}
    assert pushes.flush() == 1  # v2 only: v1 waits for its write in flight
    release.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert pushes.flush() == 1  # now the removal of v1


def test_the_first_error_condition_is_the_one_the_server_meant() -> None:
    iq = ET.fromstring(
        '<iq xmlns="jabber:component:accept" type="error">'
        '<error type="modify"><item-not-found xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">gone</text></error>'
        '<error xmlns="jabber:client" type="cancel">'
        '<feature-not-implemented xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></iq>'
    )
    assert first_condition(iq) == "item-not-found"
    assert first_condition(ET.fromstring('<iq type="error"/>')) == "undefined-condition"
