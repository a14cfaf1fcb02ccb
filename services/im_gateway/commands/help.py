"""help: every command with its usage."""

from __future__ import annotations

from services.im_gateway.commands.registry import REGISTRY, Call, command


def help_text() -> str:
    lines = ["Commands (start with ! or /). In a visitor's chat the visitor is implied; to the site bot, name them:"]
    for cmd in sorted(REGISTRY.values(), key=lambda c: c.name):
        usage = cmd.usage
        if cmd.needs_visitor:
            usage = usage.replace(cmd.name, f"{cmd.name} [visitor]", 1)
        lines.append(f"  !{usage} — {cmd.summary}")
    return "\n".join(lines)


@command("help", "help", "this list")
async def help_command(call: Call) -> None:
    call.reply(help_text())
