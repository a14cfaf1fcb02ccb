"""who, info, follow, unfollow: seeing visitors on the site."""

from __future__ import annotations

import time

from libs.common.xmlsafe import one_line
from services.im_gateway.commands.registry import Call, command
from services.im_gateway.visitors import page_status

# !who lists at most this many (the most recent): more would not fit a chat window.
WHO_LIMIT = 50


def duration(since_ms: str | int | None) -> str:
    if not since_ms:
        return "?"
    seconds = max(0, int(time.time() - int(since_ms) / 1000))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


@command("who", "who", "visitors on the site now: page, time on site, chatting")
async def who(call: Call) -> None:
    desk = call.desk
    visitor_ids = await desk.sessions.on_site(call.site_id)
    if not visitor_ids:
        call.reply("Nobody is on the site right now.")
        return
    lines = [f"{len(visitor_ids)} on the site:"]
    for visitor_id in visitor_ids[:WHO_LIMIT]:
        session = await desk.sessions.get(visitor_id)
        if not session:
            continue
        jid = await desk.names.jid_of(visitor_id)
        conversation = await desk.routing.get(session.get("conversation_id", ""))
        chatting = ""
        if conversation:
            chatting = f", chatting with {conversation.operator}" if conversation.operator else ", chatting (waiting)"
        name = f" ({one_line(session['name'])})" if session.get("name") else ""
        lines.append(
            f"  {jid}{name} — {await desk.visitor_status(visitor_id)} — {duration(session.get('started_at'))} on site"
            f"{chatting}"
        )
    if len(visitor_ids) > WHO_LIMIT:
        lines.append(f"  … and {len(visitor_ids) - WHO_LIMIT} more")
    call.reply("\n".join(lines))


@command("info", "info", "pages visited, referrer, browser, time on site", needs_visitor=True)
async def info(call: Call) -> None:
    session = await call.session()
    assert call.visitor_id is not None
    pages = await call.desk.pages.recent(call.visitor_id)
    name = await call.visitor_name()
    lines = [f"{name}:"]
    for label in ("name", "email", "phone"):
        if session.get(label):
            lines.append(f"  {label}: {one_line(session[label])}")
    lines.append(f"  on site: {duration(session.get('started_at'))}, {session.get('pages', len(pages))} pages")
    # Each field on its own line: what the visitor's browser sent cannot add lines.
    lines.append(f"  referrer: {one_line(session.get('referrer') or '(none)')}")
    lines.append(f"  browser: {one_line(session.get('user_agent') or '(unknown)')}")
    if pages:
        lines.append("  pages (newest first):")
        lines.extend(f"    {page_status(p.url, p.title)}" for p in pages[:10])
    call.reply("\n".join(lines))


@command("follow", "follow", "see the visitor's page changes as presence updates", needs_visitor=True)
async def follow(call: Call) -> None:
    assert call.visitor_id is not None
    desk = call.desk
    await desk.follows.follow(call.operator, call.visitor_id, call.site_id)
    desk.dirty_sites.add(call.site_id)  # the roster keeps followed visitors (services.im_gateway.rosters)
    jid = await desk.names.jid_of(call.visitor_id)
    desk.coalescer.update(call.operator, jid, status=await desk.visitor_status(call.visitor_id))
    call.reply(f"Following {jid}: its status shows the page it is on.")


@command("unfollow", "unfollow", "stop following the visitor", needs_visitor=True)
async def unfollow(call: Call) -> None:
    assert call.visitor_id is not None
    desk = call.desk
    jid = await desk.names.jid_of(call.visitor_id)
    desk.dirty_sites.add(call.site_id)
    if not await desk.follows.unfollow(call.operator, call.visitor_id, call.site_id):
        call.reply(f"You were not following {jid}.")
        return
    desk.coalescer.forget(call.operator, jid)
    session = await desk.sessions.get(call.visitor_id) or {}
    conversation = await desk.routing.get(session.get("conversation_id", ""))
    if not conversation or call.operator not in conversation.recipients:
        desk.coalescer.update(call.operator, jid, kind="unavailable")
    call.reply(f"No longer following {jid}.")
