"""A site's operators: add and remove XMPP addresses, see who is available now.

After each change the site directory is invalidated; the gateway listens for that and
subscribes added operators to the site's bot contact or removes it from the rosters of
removed ones.
"""

from __future__ import annotations

import tornado.web

from libs.common import partitions
from libs.common.db import site_store
from services.console import forms
from services.console.handlers.base import Page
from services.console.handlers.sites import SITE_CHANGES, site_page_context


class Operators(Page):
    @tornado.web.authenticated
    async def get(self, site_id: str) -> None:
        site = await self.owned_site(site_id)
        await self._show(site, forms.Form())

    async def _show(self, site: site_store.Site, form: forms.Form, status: int = 200) -> None:
        operators = await self.db(self.console.store.operators, site.id)
        available = set(await self.console.presence.available_operators(site.id))
        settings, explicit = self.console.settings, await self.db(self.console.store.xmpp_domain, site.id)
        self.render_page(
            "operators.html",
            status=status,
            tab="operators",
            form=form,
            operators=[(jid, name, jid in available) for jid, name in operators],
            available_count=len(available & {jid for jid, _ in operators}),
            # The site's partition (or own) domain: where its bot and visitors live.
            bot_jid=f"{site.id}@{partitions.site_domain(settings, site.id, explicit)}",
            removed=self.get_query_argument("removed", ""),
            added=self.get_query_argument("added", ""),
            **site_page_context(self, site),
        )

    @tornado.web.authenticated
    async def post(self, site_id: str) -> None:
        site = await self.owned_site(site_id)
        form = forms.Form(values={key: self.get_body_argument(key, "") for key in ("jid", "display_name")})
        jid, error = forms.operator_jid(form.values["jid"])
        if error:
            form.errors["jid"] = error
        name, error = forms.display_name(form.values["display_name"], jid)
        if error:
            form.errors["display_name"] = error
        if form.ok:
            try:
                await self.db(self.console.store.add_operator, site.id, jid, name)
            except site_store.Conflict:
                form.errors["jid"] = f"{jid} is already an operator of this site."
        if not form.ok:
            await self._show(site, form, status=400)
            return
        SITE_CHANGES.labels("operator_added").inc()
        await self.console.sites.invalidate(site.id)
        self.redirect(f"/account/sites/{site.id}/operators?added={jid}")


class RemoveOperator(Page):
    @tornado.web.authenticated
    async def post(self, site_id: str) -> None:
        site = await self.owned_site(site_id)
        jid = self.get_body_argument("jid", "")
        try:
            await self.db(self.console.store.remove_operator, site.id, jid)
        except (ValueError, site_store.NotFound):
            raise tornado.web.HTTPError(404) from None
        SITE_CHANGES.labels("operator_removed").inc()
        await self.console.sites.invalidate(site.id)
        self.redirect(f"/account/sites/{site.id}/operators?removed={site_store.normalise_jid(jid)}")
