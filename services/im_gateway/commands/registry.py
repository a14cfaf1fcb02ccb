"""Command registration: each group module decorates its handlers with ``@command``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.im_gateway.desk import Desk


class CommandError(Exception):
    """A sentence for the operator: what was wrong and what to type instead."""


@dataclass
class Call:
    desk: Desk
    operator: str  # bare JID of the operator who typed it
    site_id: str
    visitor_id: str | None  # who it is about (the chat it was typed in, or its first argument)
    args: str
    reply: Callable[[str], None]

    async def visitor_name(self) -> str:
        if self.visitor_id is None:
            raise CommandError("this command needs a visitor")
        return (await self.desk.names.jid_of(self.visitor_id)).split("@", 1)[0]

    async def session(self) -> dict[str, str]:
        if self.visitor_id is None:
            raise CommandError("this command needs a visitor")
        session = await self.desk.sessions.get(self.visitor_id)
        if not session:
            raise CommandError("that visitor's visit has ended")
        return session


Run = Callable[[Call], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    summary: str
    needs_visitor: bool
    run: Run


REGISTRY: dict[str, Command] = {}


def command(name: str, usage: str, summary: str, *, needs_visitor: bool = False) -> Callable[[Run], Run]:
    def register(run: Run) -> Run:
        REGISTRY[name] = Command(name, usage, summary, needs_visitor, run)
        return run

    return register
