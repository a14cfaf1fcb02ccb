"""Operators' rosters kept by the gateway (XEP-0356): no prompt, ever.

Real XMPP clients show presence only for roster contacts, so a visitor whose page the
operator should see must be in the operator's roster. Where the operator's server
grants the component roster access, the gateway writes the rosters itself, with
subscription "both", in one group per site ("Shoe shop — visitors"):

* the site's bot, always (its presence subscription is how the gateway learns the
  operator's availability, and the server probes it when the operator logs in);
* visitors chatting with or offered to the operator, and those they follow;
* then the site's newest active visitors, up to ``gateway_roster_cap`` per site.

Visitors leave the roster when they no longer qualify (the visit ended, a busier site
pushed them past the cap). Writes go through services.im_gateway.roster_pushes:
coalesced and at most ``gateway_roster_pushes_per_s`` per operator.

Where no roster access is granted (or the server's writes fail, as on ejabberd
23.01), the subscription flow of services.im_gateway.roster stays: the bot asks for
the operator's presence, and each chatting or followed visitor asks once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from slixmpp.exceptions import IqError, IqTimeout

from libs.common import xmlsafe
from libs.common.sitedir import SiteDirectory
from services.im_gateway import metrics
from services.im_gateway.component import GatewayComponent
from services.im_gateway.desk import Desk
from services.im_gateway.operators import SiteChange
from services.im_gateway.outbox import XmppUnavailable
from services.im_gateway.privilege import Privileges
from services.im_gateway.roster import Roster
from services.im_gateway.roster_pushes import Item, RosterPushes
from services.im_gateway.sitebot import SiteBot
from services.im_gateway.visitors import page_status

log = logging.getLogger(__name__)

ROSTER_NS = "jabber:iq:roster"
# A roster write the server has not answered after this long is given up (the next
# refresh wants it again); Prosody answers in about a millisecond on loopback.
WRITE_TIMEOUT_S = 10.0
# Conditions that mean "this server will not write rosters for us": fall back to
# subscriptions for its operators. (ejabberd 23.01 answers internal-server-error.)
REFUSALS = frozenset(
    {"forbidden", "not-allowed", "feature-not-implemented", "service-unavailable", "internal-server-error"}
)
# Roster reads in flight at once after a (re)connect, whatever the number of operators:
# each costs the server a roster load; 8 keep a thousand operators' reads within seconds.
READS_AT_ONCE = 8
# A visitor's subscription request (fallback) is asked once per visitor and operator
# for as long as a visit lasts; remembered in Redis so a restart does not ask again.
ASKED_KEY = "rosterasked"


STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def first_condition(iq: Any) -> str:
    """The error condition the server meant: the first one.

    Prosody's mod_privilege answers with its own <error/> and Prosody appends a second,
    <feature-not-implemented/> in jabber:client; slixmpp reads the second, which would
    turn a harmless item-not-found into "this server cannot write rosters".
    """
    for error in iq:
        if error.tag.rpartition("}")[2] != "error":
            continue
        for child in error:
            if child.tag.startswith(f"{{{STANZAS_NS}}}") and child.tag != f"{{{STANZAS_NS}}}text":
                return str(child.tag.rpartition("}")[2])
    return "undefined-condition"


def group_name(site_name: str) -> str:
    return f"{xmlsafe.one_line(site_name).strip() or 'Habla'} — visitors"


class Rosters:
    def __init__(
        self,
        desk: Desk,
        redis: aioredis.Redis,
        component: GatewayComponent,
        privileges: Privileges,
        sitedir: SiteDirectory,
        fallback: Roster,
        bot: SiteBot,
    ) -> None:
        self._desk = desk
        self._redis = redis
        self._component = component
        self._privileges = privileges
        self._sitedir = sitedir
        self._fallback = fallback
        self._bot = bot
        self._cap = max(0, desk.settings.gateway_roster_cap)
        # What each operator's roster holds from us, as far as we know: jid -> site id
        # ("" for a contact of a site we could not tell). Seeded from the roster itself
        # after each (re)connect where the server lets us read it.
        self.held: dict[str, dict[str, str]] = {}
        self.pushes = RosterPushes(self._write, desk.settings.gateway_roster_pushes_per_s)
        self._synced = asyncio.Event()
        self._reading: set[asyncio.Task[None]] = set()  # roster reads under way
        self._read_slots = asyncio.Semaphore(READS_AT_ONCE)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    # --- who should be in a roster ---------------------------------------------------
    async def _site_name(self, site_id: str) -> str:
        try:
            return (await self._sitedir.get(site_id)).name
        except Exception:  # an unknown or deleted site: its contacts are leaving anyway
            return site_id

    async def _bot_item(self, site_id: str) -> Item:
        name = await self._site_name(site_id)
        return Item(self._desk.bot_jid(site_id), f"{xmlsafe.one_line(name)} (Habla)", group_name(name), site_id)

    async def wanted_visitors(self, site_id: str) -> dict[str, set[str]]:
        """operator -> visitor ids their roster should hold for ``site_id``.

        A few round trips whatever the number of visitors and operators (this runs for
        every dirty site each presence interval): the open conversations (two), every
        operator's follows (one), the newest visitors (one), and whether the visitors
        kept for a chat or a follow are still on a visit (one, all of them at once)."""
        desk = self._desk
        operators = list(desk.operators.operators_of(site_id))
        must: dict[str, set[str]] = {op: set() for op in operators}
        for conversation in await desk.routing.open_conversations(site_id):
            for operator in conversation.recipients:
                if operator in must:
                    must[operator].add(conversation.visitor_id)
        if operators:
            async with desk.routing.pipeline() as pipe:
                for operator in operators:
                    desk.follows.queue_following(pipe, operator, site_id)
                follows = await pipe.execute()
            for operator, found in zip(operators, follows, strict=True):
                must[operator] |= {str(v) for v in found}
        recent = await desk.sessions.on_site(site_id, limit=self._cap) if self._cap else []
        # A visitor kept for a chat or a follow must still be on a visit.
        kept = {v for vs in must.values() for v in vs} - set(recent)
        alive = set(recent) | await desk.sessions.still_on_site(site_id, kept)
        wanted: dict[str, set[str]] = {}
        for operator, visitors in must.items():
            keep = visitors & alive
            for visitor_id in recent:  # newest first
                if len(keep) >= self._cap:
                    break
                keep.add(visitor_id)
            wanted[operator] = keep
        return wanted

    async def refresh_site(self, site_id: str) -> None:
        """Bring every operator's roster in line with the site's visitors now.

        The JIDs of every wanted visitor come in one round trip (names not yet claimed
        are claimed together), and the names of the contacts to add in one more. A
        contact whose addition is still waiting (the push ceiling) keeps the item it
        was queued with: it was looked up again at every refresh before."""
        if not self._synced.is_set():
            return  # sync_all() seeds what rosters hold first
        wanted = await self.wanted_visitors(site_id)
        group = group_name(await self._site_name(site_id))
        bot = self._desk.bot_jid(site_id)
        jids = await self._desk.names.jids_of(v for vs in wanted.values() for v in vs)
        additions: list[tuple[str, str, str]] = []  # (operator, jid, visitor id) to add
        for operator, visitor_ids in wanted.items():
            if not self._privileges.can_write(operator):
                await self._ask_subscriptions(operator, site_id, visitor_ids)
                continue
            held = {jid for jid, site in self.held.get(operator, {}).items() if site == site_id}
            if bot not in held and not self.pushes.busy(operator, bot):
                # Self-healing: whatever took the bot out (a site that flickered out of
                # this gateway's partition, a write lost with a stream), it goes back.
                self.pushes.want(operator, bot, await self._bot_item(site_id))
            want_jids = {jids[visitor_id]: visitor_id for visitor_id in visitor_ids}
            pending = self.pushes.pending_additions(operator, site_id)
            for jid, visitor_id in want_jids.items():
                if jid not in held:
                    if jid not in pending:
                        additions.append((operator, jid, visitor_id))
                else:
                    self.pushes.cancel(operator, jid)  # an earlier removal no longer applies
            for jid in held - set(want_jids) - {bot}:
                self.pushes.want(operator, jid, None)
            for jid in pending - set(want_jids) - {bot}:
                self.pushes.cancel(operator, jid)  # left before it was ever added
        if additions:
            names = await self._visitor_names({(jid, visitor_id) for _, jid, visitor_id in additions})
            for operator, jid, _visitor_id in additions:
                self.pushes.want(operator, jid, Item(jid, names[jid], group, site_id))

    async def _visitor_names(self, contacts: set[tuple[str, str]]) -> dict[str, str]:
        """jid -> the roster name of each (jid, visitor id): every session in one round trip."""
        ordered = sorted(contacts)
        async with self._desk.routing.pipeline() as pipe:
            for _jid, visitor_id in ordered:
                pipe.hgetall(self._desk.sessions.key(visitor_id))
            sessions = await pipe.execute()
        return {jid: _roster_name(jid, session or {}) for (jid, _), session in zip(ordered, sessions, strict=True)}

    async def _ask_subscriptions(self, operator: str, site_id: str, visitor_ids: set[str]) -> None:
        """Fallback: chatting and followed visitors ask once for the operator's approval.

        Only those: asking for every visitor on the site would bury the operator in prompts.
        """
        desk = self._desk
        chatting = {c.visitor_id for c in await desk.routing.open_conversations(site_id) if operator in c.recipients}
        followed = await desk.follows.following(operator, site_id)
        for visitor_id in visitor_ids & (chatting | followed):
            key = desk.settings.redis_key("gw", ASKED_KEY, operator, visitor_id)
            if await self._redis.set(key, "1", nx=True, ex=desk.settings.session_ttl_s):
                jid = await desk.names.jid_of(visitor_id)
                try:
                    desk.outbox.presence(jid, operator, kind="subscribe")
                except XmppUnavailable:
                    await self._redis.delete(key)  # ask again once the stream is back

    # --- after a (re)connect -----------------------------------------------------------
    async def sync_all(self) -> None:
        """Every operator: read their roster, put the bots in, probe their presence."""
        self._synced.clear()
        self.held.clear()
        await self._privileges.wait()
        for operator in sorted(self._desk.operators.all_operators()):
            try:
                await self.sync_operator(operator)
            except XmppUnavailable:
                return  # the next session start syncs again
            except Exception:
                log.exception("roster sync failed", extra={"operator": operator})
        self._synced.set()
        for site_id in self._desk.operators.sites():
            self._desk.dirty_sites.add(site_id)

    async def sync_operator(self, operator: str) -> None:
        """The operator's bots into their roster now; what else it holds is read after.

        The bot goes first, unconditionally: it is what brings the site online, and a
        roster read first would put a round trip (more under load) before it.
        """
        sites = self._desk.operators.sites_of(operator)
        log.debug("roster sync %s: sites %s", operator, ",".join(sites))
        if not self._privileges.can_write(operator):
            for site_id in sites:
                self._fallback.invite(operator, site_id, probe=True)
            return
        held = self.held.setdefault(operator, {})
        for site_id in sites:
            bot = self._desk.bot_jid(site_id)
            if held.get(bot) == site_id:
                self._now_in_roster(operator, bot, site_id)  # there already: ask for presence
            else:
                self.pushes.want(operator, bot, await self._bot_item(site_id))
        if self._privileges.can_read(operator):
            task = asyncio.ensure_future(self._reconcile(operator))
            self._reading.add(task)
            task.add_done_callback(self._reading.discard)
            task.add_done_callback(_log_failure)

    async def _reconcile(self, operator: str) -> None:
        """Our contacts the operator should not have (a site they left, an ended visit) leave."""
        async with self._read_slots:  # a reconnect reads every roster: a few at a time
            found = await self._read(operator)
        held = self.held.setdefault(operator, {})
        for jid, site_id in found.items():
            held.setdefault(jid, site_id)  # a write answered meanwhile knows better
        sites = set(self._desk.operators.sites_of(operator))
        for jid, site_id in list(held.items()):
            if site_id not in sites:
                self.pushes.want(operator, jid, None)
        for site_id in sites:
            self._desk.dirty_sites.add(site_id)  # visitors found in the roster are diffed too

    async def _read(self, operator: str) -> dict[str, str]:
        """Our contacts in the operator's roster: jid -> site id ("" if no live visit)."""
        iq = self._component.make_iq_get(queryxmlns=ROSTER_NS, ito=operator, ifrom=self._desk.domain)
        try:
            result = await iq.send(timeout=WRITE_TIMEOUT_S)  # type: ignore[no-untyped-call]
        except (IqError, IqTimeout) as exc:
            log.warning("cannot read an operator's roster", extra={"operator": operator, "error": str(exc)})
            return {}
        found: dict[str, str] = {}
        for element in result.xml.iter(f"{{{ROSTER_NS}}}item"):
            jid = (element.get("jid") or "").lower()
            local, _, domain = jid.partition("@")
            if domain != self._desk.domain or not local:
                continue
            site_id = self._desk.site_of_bot(local)
            if site_id is None:
                visitor_id = await self._desk.names.visitor_of(local)
                session = await self._desk.sessions.get(visitor_id) if visitor_id else None
                site_id = session["site_id"] if session else ""
            found[jid] = site_id
        return found

    # --- writing -------------------------------------------------------------------------
    async def _write(self, operator: str, jid: str, item: Item | None) -> None:
        log.debug("roster write %s: %s %s", operator, jid, "remove" if item is None else "add")
        iq = self._component.make_iq_set(ito=operator, ifrom=self._desk.domain)
        query = iq.xml.makeelement(f"{{{ROSTER_NS}}}query", {})
        attrs = {"jid": jid, "subscription": "both" if item else "remove"}
        if item:
            attrs["name"] = item.name
        element = query.makeelement(f"{{{ROSTER_NS}}}item", attrs)
        if item:
            group = element.makeelement(f"{{{ROSTER_NS}}}group", {})
            group.text = item.group
            element.append(group)
        query.append(element)
        iq.xml.append(query)
        try:
            await iq.send(timeout=WRITE_TIMEOUT_S)  # type: ignore[no-untyped-call]
        except IqError as exc:
            condition = first_condition(exc.iq.xml)
            metrics.ROSTER_FAILED.labels(condition).inc()
            if item is None and condition == "item-not-found":
                self.held.get(operator, {}).pop(jid, None)  # gone already
                return
            if condition in REFUSALS:
                self._privileges.broken(operator, condition)
                await self.sync_operator(operator)  # the subscription flow from here on
            log.warning("roster write refused: %s", condition, extra={"operator": operator, "contact": jid})
            return
        except IqTimeout:
            log.warning("roster write unanswered", extra={"operator": operator, "contact": jid})
            return
        held = self.held.setdefault(operator, {})
        if item is None:
            held.pop(jid, None)
            site_id = self._desk.site_of_bot(jid.split("@", 1)[0])
            if site_id is not None:
                self._desk.dirty_sites.add(site_id)  # still their site? the refresh puts it back
            return
        held[jid] = item.site_id
        log.debug("roster written %s: %s", operator, jid)
        self._now_in_roster(operator, jid, item.site_id)
        # The visitor may have left while this write was on its way: look again.
        self._desk.dirty_sites.add(item.site_id)

    def _now_in_roster(self, operator: str, jid: str, site_id: str) -> None:
        """A contact just entered the roster: its presence now shows, so send it."""
        if jid == self._desk.bot_jid(site_id):
            # Subscription "both": the server answers the probe with the operator's
            # presence, which is how the site comes online without a prompt.
            self._desk.outbox.presence(jid, operator, kind="probe")
            self._bot.present_to(operator, site_id)
            return
        task = asyncio.ensure_future(self.show(operator, jid))
        task.add_done_callback(_log_failure)

    async def show(self, operator: str, jid: str) -> None:
        """The visitor's presence for the operator (coalesced): their page, "chat" if chatting with them."""
        desk = self._desk
        visitor_id = await desk.names.visitor_of(jid)
        if visitor_id is None:
            return
        # The session and the latest page in one round trip (desk.visitor_status read
        # them one after the other), then the session's conversation.
        async with desk.routing.pipeline() as pipe:
            pipe.hgetall(desk.sessions.key(visitor_id))
            desk.pages.queue_latest(pipe, visitor_id)
            found, raw_page = await pipe.execute()
        session: dict[str, str] = found or {}
        page = desk.pages.from_latest(raw_page)
        if page is not None:
            status = page_status(page.url, page.title)
        else:
            status = page_status(session.get("page_url", ""), session.get("page_title", ""))
        conversation = await desk.routing.get(session.get("conversation_id", ""))
        chatting = conversation is not None and operator in conversation.recipients
        desk.coalescer.update(operator, jid, show="chat" if chatting else None, status=status)
        desk.remember_shown(operator, visitor_id)

    # --- contacts the gateway no longer knows ----------------------------------------
    def forget_stale(self, operator: str, jid: str) -> bool:
        """A contact of ours whose visit ended: out of the roster if we may write it."""
        if not self._privileges.can_write(operator):
            return False
        self.pushes.want(operator, jid, None)
        return True

    # --- site changes ----------------------------------------------------------------------
    async def apply(self, change: SiteChange) -> None:
        for operator in sorted(change.added):
            if self._privileges.can_write(operator):
                await self.sync_operator(operator)
            else:
                try:
                    self._fallback.invite(operator, change.site_id)
                except XmppUnavailable:
                    log.warning("roster change deferred until reconnect", extra={"site": change.site_id})
        for operator in sorted(change.removed):
            if self._privileges.can_write(operator):
                for jid, site_id in list(self.held.get(operator, {}).items()):
                    if site_id == change.site_id:
                        self.pushes.want(operator, jid, None)
            else:
                try:
                    self._fallback.drop(operator, change.site_id)
                except XmppUnavailable:
                    log.warning("roster change deferred until reconnect", extra={"site": change.site_id})
            await self._desk.availability.forget(operator, change.site_id)
        if change.added or change.removed:
            self._desk.dirty_sites.add(change.site_id)
            log.info(
                "site operators changed",
                extra={"site": change.site_id, "added": ",".join(change.added), "removed": ",".join(change.removed)},
            )


def _roster_name(jid: str, session: dict[str, str]) -> str:
    """The visitor's friendly name, and the name they gave if any: "amber-otter-412 (Ann)"."""
    friendly = jid.split("@", 1)[0]
    given = xmlsafe.one_line(session.get("name", "")).strip()[:60]
    return f"{friendly} ({given})" if given else friendly


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("showing a new roster contact failed", exc_info=task.exception())
