"""WCAG 2.x contrast between the theme's text colours and what they sit on.

The same formula runs in the browser (static/customiser.js) for live warnings; this
one decides what the server shows after saving, and is the one under test.
"""

from __future__ import annotations

from dataclasses import dataclass

# WCAG 2.1 success criterion 1.4.3 (AA): 4.5:1 for normal-size text.
MIN_RATIO = 4.5

# (text colour, background colour, where the pair appears in the widget)
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("header_text", "header_background", "header"),
    ("text", "background", "chat window"),
    ("visitor_text", "visitor_bubble", "visitor's messages"),
    ("operator_text", "operator_bubble", "operator's messages"),
    ("button_text", "button_background", "buttons"),
)


@dataclass(frozen=True)
class ContrastWarning:
    text_key: str
    background_key: str
    where: str
    ratio: float

    @property
    def message(self) -> str:
        return (
            f"Hard to read in the {self.where}: contrast {self.ratio:.1f}:1, "
            f"at least {MIN_RATIO}:1 is recommended (WCAG AA)."
        )


def _channel(value: int) -> float:
    # sRGB to linear light, WCAG 2.x definition of relative luminance.
    c = value / 255
    return c / 12.92 if c <= 0.03928 else float(((c + 0.055) / 1.055) ** 2.4)


def luminance(colour: str) -> float:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def ratio(foreground: str, background: str) -> float:
    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def warnings(colours: dict[str, str]) -> list[ContrastWarning]:
    found = []
    for text_key, background_key, where in PAIRS:
        value = ratio(colours[text_key], colours[background_key])
        if value < MIN_RATIO:
            found.append(ContrastWarning(text_key, background_key, where, value))
    return found
