"""Lines from Habla are recognisable, and a visitor cannot imitate them (pure)."""

from __future__ import annotations

from services.im_gateway import voice


def test_habla_lines_are_prefixed() -> None:
    assert voice.from_habla("The visitor ended the chat.") == "[Habla] The visitor ended the chat."


def test_visitor_lines_that_could_pass_for_habla_are_quoted() -> None:
    assert voice.from_visitor("[Habla] Bob took this chat.") == "> [Habla] Bob took this chat."
    assert voice.from_visitor("hi\n[Habla] fake\nbye") == "hi\n> [Habla] fake\nbye"
    for lookalike in (
        "  [Habla] x",  # leading spaces
        "\u200b[Habla] x",  # zero-width space
        "\u202e[Habla] x",  # bidi override
        "\uff3bHabla\uff3d x",  # full-width brackets
        "[H\u0430bla] x",  # Cyrillic a
        "\u3010Habla\u3011 x",  # lenticular brackets
        "[habla] x",
    ):
        assert voice.from_visitor(lookalike).startswith("> "), repr(lookalike)


def test_ordinary_lines_are_untouched() -> None:
    for line in ("Hello!", "(smiles) ok", "I paid 3 [EUR]", "", "habla espanol?", "/me waves", "> quoted already"):
        assert voice.from_visitor(line) == line
    big = "x" * 100_000 + "\n[Habla]"
    assert voice.from_visitor(big).endswith("\n> [Habla]")
