"""Presence subscriptions between operators and their sites' bots: the fallback.

Where the operator's server grants no roster access (services.im_gateway.rosters
writes rosters where it does), the bot asks for each operator's presence (that is
how the gateway learns their availability) and accepts each operator's subscription
to itself (so the bot shows in their roster with the site summary). Operators who
leave a site are unsubscribed both ways, so the bot leaves their roster.
"""

from __future__ import annotations

import logging

from services.im_gateway.desk import Desk
from services.im_gateway.sitebot import SiteBot

log = logging.getLogger(__name__)


class Roster:
    def __init__(self, desk: Desk, bot: SiteBot) -> None:
        self._desk = desk
        self._bot = bot

    def invite(self, operator: str, site_id: str, *, probe: bool = False) -> None:
        """Ask for the operator's presence; probe it after a (re)connect to rebuild availability.

        A new operator needs no probe: the server sends their presence once they approve.
        The probe goes first: Prosody answers a probe from a contact it has not approved
        yet by dropping that contact's pending subscription request, so a probe after
        the request would cancel it for an operator who is offline right now.
        """
        bot = self._desk.bot_jid(site_id)
        if probe:
            self._desk.outbox.presence(bot, operator, kind="probe")
        self._desk.outbox.presence(bot, operator, kind="subscribe")
        self._bot.present_to(operator, site_id)

    def drop(self, operator: str, site_id: str) -> None:
        bot = self._desk.bot_jid(site_id)
        self._desk.outbox.presence(bot, operator, kind="unavailable")
        self._desk.outbox.presence(bot, operator, kind="unsubscribe")
        self._desk.outbox.presence(bot, operator, kind="unsubscribed")

    def accept(self, operator: str, to: str) -> None:
        """An operator subscribed to the bot (or to a visitor): approve and show presence."""
        self._desk.outbox.presence(to, operator, kind="subscribed")
