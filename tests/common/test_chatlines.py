"""Corrections folded into the line they edit, /me actions, receipts left out (pure)."""

from __future__ import annotations

from libs.common import chatlines
from libs.common.state.conversations import chat_line, receipt_line, shown


def _entry(message_id: str, sender: str, body: str, replaces: str | None = None) -> dict[str, object]:
    return {**chat_line(sender, body, 1, None, replaces=replaces), "message_id": message_id}


def test_corrections_fold_into_their_first_version_in_place() -> None:
    entries = [
        _entry("v1", "visitor", "hi"),
        _entry("o1", "operator", "3-5 weeks"),
        {**receipt_line("v1", 2), "message_id": "rcpt-v1"},
        _entry("o2", "operator", "3-5 days", replaces="o1"),
        _entry("o3", "operator", "thanks"),
        _entry("o4", "operator", "3-5 business days", replaces="o1"),
        _entry("o5", "operator", "orphan", replaces="gone"),  # its original was never logged
    ]
    assert [(e["message_id"], e["body"], e["edited"]) for e in shown(entries)] == [
        ("v1", "hi", False),
        ("o1", "3-5 business days", True),
        ("o3", "thanks", False),
        ("o5", "orphan", True),
    ]


def test_me_is_an_action_only_with_something_done() -> None:
    assert chatlines.action("/me waves") == "waves"
    assert chatlines.action("/me ") is None and chatlines.action("/me") is None
    assert chatlines.action("/meow") is None and chatlines.action("hi /me waves") is None
    assert chatlines.as_text("Alice", "/me waves") == "* Alice waves"
    assert chatlines.as_text("Alice", "hello") == "Alice: hello"


def test_fold_is_linear_in_the_number_of_lines() -> None:
    # 10,000 corrections of one line: one line out, no quadratic work.
    lines = [_entry("o0", "operator", "v0")] + [
        _entry(f"o{n}", "operator", f"v{n}", replaces="o0") for n in range(1, 10_001)
    ]
    [only] = shown(lines)
    assert only["body"] == "v10000" and only["edited"] is True
