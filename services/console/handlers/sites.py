"""The owner's sites: list, create, and each site's overview (snippet, status image,
preview) with its settings (name, allowed domains, transcript emails)."""

from __future__ import annotations

from typing import Any

import prometheus_client
import tornado.web

from libs.common import snippets, theme
from libs.common.db import site_store
from services.console import contrast, forms
from services.console.context import origin
from services.console.handlers.base import Page

SITE_CHANGES = prometheus_client.Counter("habla_console_site_changes_total", "Changes owners saved", ["what"])


class Home(Page):
    @tornado.web.authenticated
    def get(self) -> None:
        self.redirect("/account/sites")


class SiteList(Page):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self._show(forms.Form())

    async def _show(self, form: forms.Form, status: int = 200) -> None:
        sites = await self.db(self.console.store.sites_of, self.owner)
        self.render_page("sites.html", status=status, sites=sites, form=form)

    @tornado.web.authenticated
    async def post(self) -> None:
        form = forms.Form(values={"name": self.get_body_argument("name", "")})
        name, error = forms.site_name(form.values["name"])
        if error:
            form.errors["name"] = error
            await self._show(form, status=400)
            return
        site_id, confirmed = await self.db(self.console.store.create_site, self.owner, name, self.account_email)
        if not confirmed and self.account_email:
            token = await self.db(self.console.confirmations.request, site_id, self.account_email)
            await self.console.confirmations.send_link(self.account_email, name, token)
        SITE_CHANGES.labels("created").inc()
        await self.console.sites.invalidate(site_id)
        self.redirect(f"/account/sites/{site_id}?welcome=1")


def site_page_context(page: Page, site: site_store.Site) -> dict[str, Any]:
    """What every per-site page shows around its own content (tabs, preview)."""
    settings = page.console.settings
    # Validated again: whatever is in the row, only #rrggbb colours reach the page's CSS.
    current, _ = theme.validate(site.theme)
    return {
        "site": site,
        "colours": current["colours"],
        "texts": current["texts"],
        "preview_url": f"{settings.public_url.rstrip('/')}/preview/{site.id}",
        "preview_origin": origin(settings.public_url),
        "status_image_url": f"{settings.status_public_url.rstrip('/')}/status/{site.id}/image.png",
        "contrast_pairs": contrast.PAIRS,
        "min_contrast": contrast.MIN_RATIO,
    }


class SiteOverview(Page):
    @tornado.web.authenticated
    async def get(self, site_id: str) -> None:
        site = await self.owned_site(site_id)
        form = forms.Form(
            values={
                "name": site.name,
                "allowed_domains": "\n".join(site.allowed_domains),
                "transcript_emails": "\n".join(site.transcript_emails),
            }
        )
        await self._show(site, form)

    async def _show(self, site: site_store.Site, form: forms.Form, status: int = 200) -> None:
        settings = self.console.settings
        pending = await self.db(self.console.confirmations.pending, site.id)
        self.render_page(
            "site.html",
            status=status,
            form=form,
            tab="overview",
            welcome=self.get_query_argument("welcome", "") == "1",
            saved=self.get_query_argument("saved", "") == "1",
            snippet=snippets.embed_snippet(settings.public_url, site.id),
            status_html=snippets.status_image_html(settings.public_url, settings.status_public_url, site.id),
            chat_page_url=f"{settings.public_url.rstrip('/')}/chat/{site.id}",
            pending_emails=pending,
            unsent=self.get_query_argument("unsent", "") == "1",
            **site_page_context(self, site),
        )

    @tornado.web.authenticated
    async def post(self, site_id: str) -> None:
        site = await self.owned_site(site_id)
        form = forms.Form(
            values={key: self.get_body_argument(key, "") for key in ("name", "allowed_domains", "transcript_emails")}
        )
        name, error = forms.site_name(form.values["name"])
        if error:
            form.errors["name"] = error
        domains, error = forms.domains(form.values["allowed_domains"])
        if error:
            form.errors["allowed_domains"] = error
        emails, error = forms.transcript_emails(form.values["transcript_emails"])
        if error:
            form.errors["transcript_emails"] = error
        if not form.ok:
            await self._show(site, form, status=400)
            return
        # Addresses already confirmed stay; new ones get a link and wait for it.
        confirmed = [email for email in emails if email in site.transcript_emails]
        new = [email for email in emails if email not in site.transcript_emails]
        await self.db(self.console.store.update_settings, self.owner, site.id, name, domains, confirmed)
        await self.db(self.console.confirmations.withdraw_except, site.id, emails)
        pending = await self.db(self.console.confirmations.pending, site.id)
        sent_all = True
        for email in new:
            if email not in pending:  # its link is out already; saving again does not resend
                token = await self.db(self.console.confirmations.request, site.id, email)
                sent_all = await self.console.confirmations.send_link(email, name, token) and sent_all
        SITE_CHANGES.labels("settings").inc()
        await self.console.sites.invalidate(site.id)
        self.redirect(f"/account/sites/{site.id}?saved=1" + ("" if sent_all else "&unsent=1"))


class NotFoundPage(Page):
    """Unknown URLs get the console's 404 page (with its security headers)."""

    def prepare(self) -> None:  # type: ignore[override]
        raise tornado.web.HTTPError(404)
