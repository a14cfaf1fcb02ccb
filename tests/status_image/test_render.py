"""Drawing the images (pure Pillow, no servers)."""

from __future__ import annotations

import io

from PIL import Image

from libs.common import theme
from services.status_image.render import HEIGHT, WIDTH, ImageRenderer
from tests.status_image.conftest import top_colour


def test_default_look_is_two_pngs_in_the_theme_colours_with_distinct_etags() -> None:
    renderer = ImageRenderer()
    look = renderer.look(theme.default_theme())
    for image, colour in ((look.online, "online_image"), (look.offline, "offline_image")):
        assert image.body.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(image.body)) as decoded:
            assert decoded.size == (WIDTH, HEIGHT)
        assert top_colour(image.body) == theme.DEFAULT_COLOURS[colour]
    assert look.online.etag != look.offline.etag
    assert look.online.etag.startswith('"') and look.online.etag.endswith('"')


def test_each_look_is_drawn_once_and_shared() -> None:
    renderer = ImageRenderer()
    first = renderer.look({})
    again = renderer.look({"colours": {}, "texts": {}})
    assert first.online is again.online and first.offline is again.offline


def test_theme_colours_and_texts_change_the_image_and_bad_values_fall_back() -> None:
    renderer = ImageRenderer()
    default = renderer.look({})
    custom = renderer.look({"colours": {"online_image": "#ff0000"}, "texts": {"online_image_text": "Talk to Ana"}})
    assert top_colour(custom.online.body) == "#ff0000"
    assert custom.online.etag != default.online.etag
    assert custom.offline is default.offline  # unchanged half of the theme: same image
    broken = renderer.look({"colours": {"online_image": "red;}"}, "texts": "not a dict"})
    assert broken.online is default.online


def test_longest_allowed_text_still_renders_and_light_backgrounds_get_dark_text() -> None:
    renderer = ImageRenderer()
    longest = "W" * theme.TEXT_LIMITS["online_image_text"]
    image = renderer.status_image("#ffffff", longest, online=True)
    with Image.open(io.BytesIO(image.body)) as decoded:
        dark = sum(decoded.convert("L").histogram()[:80])  # pixels darker than 80/255
    assert dark > 50  # the text (and dot) are drawn dark on white


def test_missing_font_falls_back_to_pillows_own(tmp_path) -> None:
    renderer = ImageRenderer(font_path=tmp_path / "no-such-font.ttf")
    assert renderer.look({}).online.body.startswith(b"\x89PNG")


def test_neutral_image_is_one_transparent_pixel() -> None:
    with Image.open(io.BytesIO(ImageRenderer().neutral.body)) as decoded:
        assert decoded.size == (1, 1)
        assert decoded.convert("RGBA").getpixel((0, 0))[3] == 0  # type: ignore[index]
