"""Drawing the status images with Pillow, once per (colour, text), kept as PNG bytes.

Rendering takes a few milliseconds; a request must take microseconds, so an image is
drawn the first time a (colour, text) pair is needed and the bytes are reused by every
site with that look (most sites keep the default theme and share two images). The ETag
is a hash of the bytes, so it changes exactly when the picture does.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from libs.common import theme

log = logging.getLogger(__name__)

# The size the README/CLI snippet declares (<img width="160" height="40">), so the page
# lays out before the image arrives.
WIDTH, HEIGHT = 160, 40
# Largest and smallest font size tried: 14 px reads like body text next to the image;
# 9 px is the smallest still legible, needed for the longest texts (30 characters).
MAX_FONT_PX, MIN_FONT_PX = 14, 9
# Room left for the status dot on the left and a margin on the right, in pixels.
TEXT_LEFT, TEXT_RIGHT_MARGIN = 30, 8
DOT_CENTRE_X, DOT_RADIUS = 16, 5
# Rounded corners, like the widget's launcher button.
CORNER_RADIUS = 8
# Distinct looks kept: each is two PNGs of ~1-2 KB, so 4096 is a few MB at most.
MAX_CACHED_IMAGES = 4096
# Debian's fonts-dejavu-core; where it is missing (slim containers) Pillow's own font.
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class RenderedImage:
    body: bytes
    etag: str  # quoted, as sent in the ETag header


@dataclass(frozen=True)
class SiteLook:
    """The two images of one site's theme."""

    offline: RenderedImage
    online: RenderedImage

    def image(self, online: bool) -> RenderedImage:
        return self.online if online else self.offline


@functools.lru_cache(maxsize=256)  # operator counts are small numbers: a handful of bodies
def state_json(online: bool, operators: int) -> tuple[bytes, str]:
    """The JSON answer for a state and its ETag (shared by Tornado and the nginx files)."""
    body = json.dumps({"online": online, "operators_available": operators}).encode()
    return body, f'"{int(online)}-{operators}"'


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha1(body, usedforsecurity=False).hexdigest()[:20] + '"'


def _png(image: Image.Image) -> RenderedImage:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    body = out.getvalue()
    return RenderedImage(body, _etag(body))


def _luminance(colour: str) -> float:
    """WCAG 2 relative luminance of #rrggbb."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(int(colour[i : i + 2], 16) / 255) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def one_line(text: str) -> str:
    """``text`` with control, separator and surrogate characters turned into spaces."""
    return " ".join("".join(" " if unicodedata.category(c) in _UNDRAWABLE else c for c in text).split())


# Control, line/paragraph separator, surrogate, private use and unassigned characters.
_UNDRAWABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio (1 to 21); 0.05 is the standard's flare term."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


DARK_INK, LIGHT_INK = "#1b1b1b", "#ffffff"  # the widget's text colours


def _text_colour(background: str) -> str:
    """Whichever of the widget's dark or light text reads better on ``background``."""
    return DARK_INK if _contrast(background, DARK_INK) > _contrast(background, LIGHT_INK) else LIGHT_INK


class ImageRenderer:
    def __init__(self, font_path: Path | None = DEJAVU) -> None:
        self._font_path = font_path if font_path is not None and font_path.exists() else None
        if self._font_path is None:
            log.info("DejaVu font not found; using Pillow's built-in font")
        self._fonts: dict[int, Font] = {}
        self._images: OrderedDict[tuple[str, str, bool], RenderedImage] = OrderedDict()
        self.neutral = self._neutral()

    def _font(self, size: int) -> Font:
        if size not in self._fonts:
            if self._font_path is not None:
                self._fonts[size] = ImageFont.truetype(str(self._font_path), size)
            else:
                self._fonts[size] = ImageFont.load_default(size=size)
        return self._fonts[size]

    def look(self, site_theme: dict[str, Any]) -> SiteLook:
        """Both images for a site's stored theme (invalid or missing keys: the defaults)."""
        # The console validates themes before saving; still, a hand-edited row must not
        # stop the image, so only well-shaped sections reach theme.validate.
        sections = site_theme if isinstance(site_theme, dict) else {}
        merged, _ = theme.validate({k: v for k, v in sections.items() if isinstance(v, dict)})
        colours, texts = merged["colours"], merged["texts"]
        return SiteLook(
            offline=self.status_image(colours["offline_image"], texts["offline_image_text"], online=False),
            online=self.status_image(colours["online_image"], texts["online_image_text"], online=True),
        )

    def status_image(self, colour: str, text: str, *, online: bool) -> RenderedImage:
        key = (colour, text, online)
        cached = self._images.get(key)
        if cached is not None:
            self._images.move_to_end(key)
            return cached
        image = self._draw(colour, text, online)
        self._images[key] = image
        if len(self._images) > MAX_CACHED_IMAGES:
            self._images.popitem(last=False)
        return image

    def _draw(self, colour: str, text: str, online: bool) -> RenderedImage:
        # One line of printable text: Pillow refuses to measure a newline ("multiline
        # text") and cannot encode a lone surrogate; a theme row edited by hand may hold both.
        text = one_line(text) or "Live chat"
        image = Image.new("RGBA", (WIDTH, HEIGHT), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        draw.rounded_rectangle((0, 0, WIDTH - 1, HEIGHT - 1), radius=CORNER_RADIUS, fill=colour)
        ink = _text_colour(colour)
        # The dot says the state without reading: filled when online, a ring when offline.
        dot = (DOT_CENTRE_X - DOT_RADIUS, HEIGHT // 2 - DOT_RADIUS, DOT_CENTRE_X + DOT_RADIUS, HEIGHT // 2 + DOT_RADIUS)
        draw.ellipse(dot, fill=ink if online else None, outline=ink, width=2)
        room = WIDTH - TEXT_LEFT - TEXT_RIGHT_MARGIN
        for size in range(MAX_FONT_PX, MIN_FONT_PX - 1, -1):
            font = self._font(size)
            if draw.textlength(text, font=font) <= room:
                break
        while draw.textlength(text, font=font) > room and len(text) > 1:
            text = text[:-2].rstrip() + "…"  # still too long at the smallest size
        draw.text((TEXT_LEFT, HEIGHT // 2), text, font=font, fill=ink, anchor="lm")
        return _png(image)

    def _neutral(self) -> RenderedImage:
        """What an unknown site id gets: one transparent pixel, invisible on any page."""
        return _png(Image.new("RGBA", (1, 1), (0, 0, 0, 0)))
