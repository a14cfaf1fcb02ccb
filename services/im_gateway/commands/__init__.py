"""Operator commands: ``!name args`` or ``/name args``, one module per group.

Typed in a visitor's chat, a visitor command is about that visitor; typed to the site
bot, its first argument names the visitor (``!info amber-otter-412``). Unknown
commands answer with the help.
"""

from __future__ import annotations

from collections.abc import Callable

from services.im_gateway import metrics
from services.im_gateway.commands import conversation, details, help, visitors  # noqa: F401  (registers)
from services.im_gateway.commands.help import help_text
from services.im_gateway.commands.registry import REGISTRY, Call, CommandError
from services.im_gateway.desk import Desk

PREFIXES = ("!", "/")


def parse(body: str) -> tuple[str, str] | None:
    """(command, arguments) if ``body`` is a command, else None."""
    text = body.strip()
    if len(text) < 2 or text[0] not in PREFIXES or text[1] in PREFIXES or text[1].isspace():
        return None
    if text.lower().startswith("/me ") or text.lower() == "/me":
        return None  # XEP-0245 "/me waves" is a chat line, not a command
    name, _, args = text[1:].partition(" ")
    return name.lower(), args.strip()


async def run(
    desk: Desk, operator: str, site_id: str, visitor_id: str | None, name: str, args: str, reply: Callable[[str], None]
) -> None:
    command = REGISTRY.get(name)
    if command is None:
        metrics.COMMANDS.labels("unknown").inc()
        reply(f"Unknown command !{name}.\n{help_text()}")
        return
    metrics.COMMANDS.labels(name).inc()
    if command.needs_visitor and visitor_id is None:
        wanted, _, args = args.partition(" ")
        if not wanted:
            reply(f"Name the visitor: !{command.usage.replace(name, name + ' <visitor>', 1)} (see !who)")
            return
        visitor_id = await desk.names.visitor_of(wanted)
        session = await desk.sessions.get(visitor_id) if visitor_id else None
        # Another site's visitor is reported exactly like an unknown one.
        if not session or session.get("site_id") != site_id:
            reply(f"No visitor {wanted!r} on this site (see !who).")
            return
        args = args.strip()
    try:
        await command.run(Call(desk, operator, site_id, visitor_id, args, reply))
    except CommandError as exc:
        reply(f"!{name}: {exc}.")
