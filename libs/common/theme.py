"""A site's theme: the widget's and status image's colours and texts.

Stored as JSON in ``sites.theme``; only keys listed here exist, colours must be
#rrggbb and texts are length-limited plain text, so a theme can never carry markup
into a visitor's page.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

# Used with fullmatch: a "$" would let "#ffffff\n" into the widget's CSS.
COLOUR_RE = re.compile(r"#[0-9a-fA-F]{6}")

DEFAULT_COLOURS: dict[str, str] = {
    "header_background": "#1f6f8b",
    "header_text": "#ffffff",
    "background": "#ffffff",
    "text": "#1b1b1b",
    "visitor_bubble": "#e3f1f6",
    "visitor_text": "#1b1b1b",
    "operator_bubble": "#f1f1f1",
    "operator_text": "#1b1b1b",
    "button_background": "#1f6f8b",
    "button_text": "#ffffff",
    "online_image": "#2e8b57",
    "offline_image": "#8a8a8a",
}

# Longest each text may be: fits the widget's 320 px header / one form label line.
TEXT_LIMITS: dict[str, int] = {
    "welcome_title": 60,
    "welcome_message": 300,
    "away_message": 300,
    "offline_title": 60,
    "offline_name_label": 40,
    "offline_email_label": 40,
    "offline_message_label": 40,
    "input_placeholder": 60,
    "online_image_text": 30,
    "offline_image_text": 30,
}

DEFAULT_TEXTS: dict[str, str] = {
    "welcome_title": "Chat with us",
    "welcome_message": "Questions? We're here. Type below to start chatting.",
    "away_message": "We're away right now. Leave a note and we'll get back to you by email.",
    "offline_title": "Leave a message",
    "offline_name_label": "Your name",
    "offline_email_label": "Your email",
    "offline_message_label": "Message",
    "input_placeholder": "Type a message and press Enter",
    "online_image_text": "Live chat: online",
    "offline_image_text": "Live chat: offline",
}


def _plain_text(text: str, one_line: bool) -> bool:
    """No control or surrogate characters (they break XML, Pillow and mail); line breaks
    only where the text may have several lines (the widget's messages, not an image)."""
    for char in text:
        category = unicodedata.category(char)
        if category == "Cs" or (category == "Cc" and (one_line or char not in "\t\n\r")):
            return False
        if one_line and category in ("Zl", "Zp"):
            return False
    return True


def default_theme() -> dict[str, dict[str, str]]:
    return {"colours": dict(DEFAULT_COLOURS), "texts": dict(DEFAULT_TEXTS)}


def validate(theme: Mapping[str, Any]) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Merge ``theme`` over the defaults. Returns (theme, errors by field name)."""
    merged = default_theme()
    errors: dict[str, str] = {}
    colours, texts = theme.get("colours") or {}, theme.get("texts") or {}
    if not isinstance(colours, Mapping):
        errors["colours"] = "must be a mapping of colour names to #rrggbb values"
        colours = {}
    if not isinstance(texts, Mapping):
        errors["texts"] = "must be a mapping of text names to strings"
        texts = {}
    for key, value in dict(colours).items():
        if key not in DEFAULT_COLOURS:
            errors[key] = f"unknown colour {key!r}"
        elif not isinstance(value, str) or not COLOUR_RE.fullmatch(value):
            errors[key] = "must be a colour like #1f6f8b"
        else:
            merged["colours"][key] = value.lower()
    for key, value in dict(texts).items():
        if key not in DEFAULT_TEXTS:
            errors[key] = f"unknown text {key!r}"
        elif not isinstance(value, str) or not value.strip():
            errors[key] = "must not be empty"
        elif len(value) > TEXT_LIMITS[key]:
            errors[key] = f"must be at most {TEXT_LIMITS[key]} characters"
        elif not _plain_text(value, one_line=key.endswith("_image_text")):
            errors[key] = "must be plain text, without control characters" + (
                " or line breaks (it is drawn on one line)" if key.endswith("_image_text") else ""
            )
        else:
            merged["texts"][key] = value.strip()
    return merged, errors
