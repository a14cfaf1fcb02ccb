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


# For operators whose server does not let Habla keep their roster (XEP-0356).
PRIVILEGE_HELP = """\
Visitors are not added to your contact list automatically: your XMPP server does not let Habla manage rosters.
Each chatting or followed visitor asks once to be added; accept it to see their page as their status.
To get visitors (and this bot) without prompts, your server's admin grants Habla roster access (XEP-0356):
  Prosody: install prosody-modules, enable "privilege" on the VirtualHost and on the Habla Component,
    and set on the VirtualHost: privileged_entities = {{ ["{domain}"] = {{ roster = "both"; message = "outgoing" }} }}
  ejabberd: mod_privilege with roster: both: allow: server: "{domain}"
    (ejabberd 23.01 refuses these writes, issue #3942: a later release is needed)"""


def privilege_help(domain: str) -> str:
    return PRIVILEGE_HELP.format(domain=domain)


@command("help", "help", "this list")
async def help_command(call: Call) -> None:
    text = help_text()
    if not call.desk.roster_managed(call.operator):
        text = f"{text}\n\n{privilege_help(call.desk.domain)}"
    call.reply(text)
