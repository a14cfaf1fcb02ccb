"""libs.common.xmlsafe: what XML 1.0 forbids goes, everything else stays."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from libs.common.xmlsafe import clean, one_line

C0 = "".join(chr(c) for c in range(0x20))
FORBIDDEN_C0 = "".join(ch for ch in C0 if ch not in "\t\n\r")


def _parses(text: str) -> bool:
    try:
        ET.fromstring(f"<b>{text}</b>".encode())
    except ET.ParseError:
        return False
    return True


def test_clean_removes_each_forbidden_c0_character_and_keeps_tab_newline_cr() -> None:
    for ch in C0:
        kept = ch in "\t\n\r"
        assert clean(f"a{ch}b") == (f"a{ch}b" if kept else "ab"), repr(ch)


def test_clean_removes_lone_surrogates_and_the_two_noncharacters() -> None:
    for ch in ("\ud800", "\udbff", "\udc00", "\udfff", "\ufffe", "\uffff"):
        assert clean(f"x{ch}y") == "xy", repr(ch)


def test_clean_keeps_everything_xml_allows() -> None:
    text = "Grüße, 日本語, emoji 😀 (U+1F600), U+FFFD \ufffd, C1 \x85\x9f, DEL \x7f, <&>\"'"
    assert clean(text) == text


def test_cleaned_worst_text_is_well_formed_xml() -> None:
    worst = C0 + "\ud800\udfff\ufffe\uffff" + "ok"
    cleaned = clean(worst)
    # Escaping markup is the serialiser's job; forbidden characters are ours.
    escaped = cleaned.replace("&", "&amp;").replace("<", "&lt;")
    assert _parses(escaped)
    assert not _parses(FORBIDDEN_C0[0])  # the premise: one of them breaks a document


def test_one_line_folds_every_line_break_to_one_space() -> None:
    assert one_line("Checkout\r\n[info] fake line") == "Checkout [info] fake line"
    assert one_line("a\nb\rc\x0bd\x0ce\x1cf\x85g\u2028h\u2029i\tj") == "a b c d e f g h i j"
    assert one_line("a\n\n\r\nb") == "a b"
    assert one_line("a\x01\nb\ud800") == "a b"
    for ch in C0:
        assert "\n" not in one_line(f"a{ch}b") and "\r" not in one_line(f"a{ch}b")


def test_large_text_is_cleaned_in_linear_time() -> None:
    text = ("\x01line\n" * 20_000) + "\ud800" * 50_000
    assert clean(text) == "line\n" * 20_000
    assert one_line(text) == "line " * 20_000


def test_one_line_folds_a_run_of_breaks_and_controls_into_one_space() -> None:
    c0 = "".join(chr(c) for c in range(0x20))
    assert one_line(f"Jane{c0}Doe") == "Jane Doe"
