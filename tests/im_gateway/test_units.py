"""Pure pieces: command parsing, friendly names, status lines."""

from __future__ import annotations

from services.im_gateway import commands
from services.im_gateway.sitebot import summary_text
from services.im_gateway.visitors import VisitorNames, page_status


def test_both_prefixes_and_not_me() -> None:
    assert commands.parse("!who") == ("who", "")
    assert commands.parse("/WHO") == ("who", "")
    assert commands.parse("  !name  Jane   Doe ") == ("name", "Jane   Doe")
    assert commands.parse("/me waves") is None  # XEP-0245, a chat line
    assert commands.parse("hello") is None
    assert commands.parse("!") is None and commands.parse("!! wow") is None and commands.parse("! x") is None


def test_friendly_names_are_stable_readable_jid_parts() -> None:
    first = VisitorNames.candidate("0123456789abcdef")
    assert first == VisitorNames.candidate("0123456789abcdef")
    assert first != VisitorNames.candidate("0123456789abcdef", attempt=1)
    adjective, animal, number = first.split("-")
    assert adjective.isalpha() and animal.isalpha() and number.isdigit()
    names = {VisitorNames.candidate(f"{i:016x}") for i in range(2000)}
    assert len(names) > 1990  # collisions are rare (and resolved by the attempt number)


def test_status_lines() -> None:
    assert page_status("https://s.example/a", "  Boots \n sale ") == "Boots sale — https://s.example/a"
    assert page_status("https://s.example/a", "") == "https://s.example/a"
    assert summary_text(1, 0) == "1 visitor on site, 0 chatting"
    assert summary_text(4, 1) == "4 visitors on site, 1 chatting"
