"""Who is connected to this instance: listeners per visitor and per site.

A listener is a WebSocket or a parked long-poll. Deliveries and status changes only
*wake* listeners; each then reads the conversation log itself from its own cursor,
so a wake-up that is missed or doubled costs nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Protocol

Event = Mapping[str, Any]


class Listener(Protocol):
    def wake(self, event: Event) -> None:
        """Called on the event loop; must not block (schedule work instead)."""


class Hub:
    def __init__(self) -> None:
        self._by_visitor: dict[str, set[Listener]] = defaultdict(set)
        self._by_site: dict[str, set[Listener]] = defaultdict(set)

    def add(self, site_id: str, visitor_id: str, listener: Listener) -> None:
        self._by_visitor[visitor_id].add(listener)
        self._by_site[site_id].add(listener)

    def remove(self, site_id: str, visitor_id: str, listener: Listener) -> None:
        for index, key in ((self._by_visitor, visitor_id), (self._by_site, site_id)):
            listeners = index.get(key)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del index[key]

    def to_visitor(self, visitor_id: str, event: Event, *, besides: Listener | None = None) -> int:
        """Wake every connection of one visitor (but ``besides``); returns how many were woken."""
        listeners = [listener for listener in self._by_visitor.get(visitor_id, ()) if listener is not besides]
        for listener in listeners:
            listener.wake(event)
        return len(listeners)

    def to_site(self, site_id: str, event: Event) -> int:
        listeners = list(self._by_site.get(site_id, ()))
        for listener in listeners:
            listener.wake(event)
        return len(listeners)

    def has_site(self, site_id: str) -> bool:
        return site_id in self._by_site

    def listeners(self) -> list[Listener]:
        return [listener for listeners in self._by_visitor.values() for listener in listeners]

    @property
    def connections(self) -> int:
        return sum(len(listeners) for listeners in self._by_visitor.values())
