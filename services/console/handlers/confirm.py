"""GET/POST /account/confirm/<token>: the link mailed to a new transcript address.

No log-in needed (the address may be a colleague's). GET only shows a button, because
mail scanners fetch links; the POST (with the CSRF token) confirms.
"""

from __future__ import annotations

import tornado.web

from services.console.handlers.base import Page


class ConfirmAddress(Page):
    async def get(self, token: str) -> None:
        found = await self.db(self.console.confirmations.lookup, token)
        if found is None:
            raise tornado.web.HTTPError(404)
        site_id, email = found
        self.render_page("confirm.html", email=email, site_id=site_id, token=token, done=False)

    async def post(self, token: str) -> None:
        done = await self.db(self.console.confirmations.confirm, token)
        if done is None:
            raise tornado.web.HTTPError(404)
        site_id, email = done
        await self.console.sites.invalidate(site_id)
        self.render_page("confirm.html", email=email, site_id=site_id, token=token, done=True)
