"""Bounds on numbers from outside (libs/common/plausible.py): pure, no servers."""

from __future__ import annotations

import pytest

from libs.common import codec, plausible


def _line(**fields: object) -> object:
    base: dict[str, object] = dict(
        message_id="m1",
        conversation_id="c",
        site_id="4324-24618-10-8812",
        visitor_id="v",
        sender=codec.SenderKind.VISITOR,
        body="hi",
        sent_at_ms=1_700_000_000_000,
        seq=1,
    )
    return codec.ChatMessage(**{**base, **fields})


@pytest.mark.parametrize("value", [-1, 2**63 - 1, plausible.MAX_SEQ + 1])
def test_absurd_seq_is_refused(value: int) -> None:
    with pytest.raises(plausible.Implausible, match="seq"):
        plausible.check(_line(seq=value))


@pytest.mark.parametrize("value", [-1, 2**63 - 1, -(2**63)])
def test_absurd_timestamp_is_refused(value: int) -> None:
    with pytest.raises(plausible.Implausible, match="sent_at_ms"):
        plausible.check(_line(sent_at_ms=value))


def test_unknown_enum_value_is_refused() -> None:
    with pytest.raises(plausible.Implausible, match="SenderKind"):
        plausible.check(_line(sender=99))


def test_nested_lines_of_a_transcript_are_checked() -> None:
    transcript = codec.Transcript(
        conversation_id="c",
        site_id="s",
        visitor_id="v",
        pages=[],
        messages=[_line(), _line(seq=-5)],
        operator_jids=[],
        started_at_ms=1,
        closed_at_ms=2,
        reason=codec.CloseReason.IDLE,
    )
    with pytest.raises(plausible.Implausible, match=r"messages\[1\]\.seq"):
        plausible.check(transcript)


def test_ordinary_messages_pass() -> None:
    plausible.check(_line(seq=0))
    plausible.check(_line(seq=plausible.MAX_SEQ, sent_at_ms=0))
    status = codec.SiteStatus(site_id="s", online=True, operators_available=3, at_ms=1)
    plausible.check(status)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, 0),
        (3, 3),
        ("2", 2),
        (b"1", 1),
        ("x", 0),
        ("", 0),
        ("-1", 0),
        (-1, 0),
        (True, 0),
        (10**30, 0),
        ("\u0661", 0),  # an Arabic-Indic digit: isdigit() but not ASCII
        ("9" * 40, 0),
        (1.5, 0),
        ([1], 0),
    ],
)
def test_header_int_never_raises(raw: object, expected: int) -> None:
    assert plausible.header_int({"x-habla-attempt": raw}, "x-habla-attempt") == expected
    assert plausible.header_int(None, "x-habla-attempt") == 0


def test_bytes_where_text_belongs_are_refused() -> None:
    # What thriftpy2 returns for a string field holding invalid UTF-8.
    with pytest.raises(plausible.Implausible, match="site_id is not valid UTF-8"):
        plausible.check(_line(site_id=b"\xed\xa0\x80"))
    presence = codec.OperatorPresence(operator_jid="a@b", availability=1, at_ms=1, site_ids=["s", b"\xff"])
    with pytest.raises(plausible.Implausible, match=r"site_ids\[1\]"):
        plausible.check(presence)
