"""How a conversation's lines read, for everything that shows one (widget aside, which
does the same in JavaScript): corrections folded into the line they edit, and /me.

A correction (XEP-0308) is stored and archived as a line of its own that names the
first version of the line it edits (``replaces``), so nothing is ever overwritten;
readers show that first line once, with the latest text, marked edited. A correction
whose original is not among the lines (never archived, or cut off) is shown as a
line of its own, still marked edited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# XEP-0245: a body starting with "/me " is an action ("* Alice waves").
ME_PREFIX = "/me "


@dataclass
class Shown(Generic[T]):
    line: T  # the first version (or an orphan correction)
    body: str  # the latest text
    edited: bool


def fold(
    lines: Iterable[T],
    *,
    message_id: Callable[[T], str],
    replaces: Callable[[T], str | None],
    body: Callable[[T], str],
) -> list[Shown[T]]:
    """``lines`` in order (a correction after what it corrects), corrections folded in."""
    shown: list[Shown[T]] = []
    by_id: dict[str, Shown[T]] = {}
    for line in lines:
        target = replaces(line)
        if target and target in by_id:
            by_id[target].body = body(line)
            by_id[target].edited = True
            continue
        item = Shown(line, body(line), bool(target))
        shown.append(item)
        by_id[message_id(line)] = item
    return shown


def action(body: str) -> str | None:
    """The action of a "/me waves" line ("waves"), or None for an ordinary line."""
    if body.startswith(ME_PREFIX) and body[len(ME_PREFIX) :].strip():
        return body[len(ME_PREFIX) :]
    return None


def as_text(who: str, body: str) -> str:
    """A line as plain text after its author: "Alice: hi", or "* Alice waves"."""
    did = action(body)
    return f"* {who} {did}" if did is not None else f"{who}: {body}"
