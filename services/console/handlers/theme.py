"""The customiser: every colour and text of the widget and status image, with a live
preview (static/customiser.js) and contrast warnings."""

from __future__ import annotations

from typing import Any

import tornado.web

from libs.common import theme
from libs.common.db import site_store
from services.console import contrast
from services.console.handlers.base import Page
from services.console.handlers.sites import SITE_CHANGES, site_page_context

# Labels people read, in the order the form shows them.
COLOUR_LABELS = {
    "header_background": "Header background",
    "header_text": "Header text",
    "background": "Window background",
    "text": "Window text",
    "visitor_bubble": "Visitor's bubble",
    "visitor_text": "Visitor's text",
    "operator_bubble": "Operator's bubble",
    "operator_text": "Operator's text",
    "button_background": "Buttons",
    "button_text": "Button text",
    "online_image": "Status image: online",
    "offline_image": "Status image: offline",
}
TEXT_LABELS = {
    "welcome_title": "Title",
    "welcome_message": "Welcome message",
    "away_message": "Away message (nobody available)",
    "offline_title": "Offline form title",
    "offline_name_label": "Offline form: name label",
    "offline_email_label": "Offline form: email label",
    "offline_message_label": "Offline form: message label",
    "input_placeholder": "Input placeholder",
    "online_image_text": "Status image text: online",
    "offline_image_text": "Status image text: offline",
}
assert set(COLOUR_LABELS) == set(theme.DEFAULT_COLOURS) and set(TEXT_LABELS) == set(theme.DEFAULT_TEXTS)


class Customiser(Page):
    @tornado.web.authenticated
    async def get(self, site_id: str) -> None:
        site = await self.owned_site(site_id)
        current, _ = theme.validate(site.theme)  # fills keys added to the defaults since
        self._show(site, current, {}, saved=self.get_query_argument("saved", "") == "1")

    def _show(
        self, site: site_store.Site, shown: dict[str, dict[str, str]], errors: dict[str, str], **extra: Any
    ) -> None:
        # Invalid colours the owner typed stay in the form's error messages, but the
        # pickers and the preview's CSS only ever get valid ones.
        valid_colours = {
            key: value if theme.COLOUR_RE.fullmatch(value) else theme.DEFAULT_COLOURS[key]
            for key, value in shown["colours"].items()
        }
        context = site_page_context(self, site)
        context.update(colours=valid_colours, texts=shown["texts"])
        self.render_page(
            "theme.html",
            status=400 if errors else 200,
            tab="theme",
            shown=shown,
            errors=errors,
            warnings={w.text_key: w for w in contrast.warnings(valid_colours)},
            colour_labels=COLOUR_LABELS,
            text_labels=TEXT_LABELS,
            text_limits=theme.TEXT_LIMITS,
            **extra,
            **context,
        )

    @tornado.web.authenticated
    async def post(self, site_id: str) -> None:
        site = await self.owned_site(site_id)
        submitted = {
            "colours": {key: self.get_body_argument(f"colour_{key}", "").strip() for key in theme.DEFAULT_COLOURS},
            "texts": {key: self.get_body_argument(f"text_{key}", "") for key in theme.DEFAULT_TEXTS},
        }
        merged, errors = theme.validate(submitted)
        if errors:
            self._show(site, submitted, errors, saved=False)
            return
        await self.db(self.console.store.save_theme, self.owner, site.id, merged)
        SITE_CHANGES.labels("theme").inc()
        await self.console.sites.invalidate(site.id)
        self.redirect(f"/account/sites/{site.id}/theme?saved=1")
