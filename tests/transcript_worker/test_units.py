"""Pure logic: batching, archive merging, transcript ordering, email composition."""

from __future__ import annotations

import asyncio
import datetime

import pytest

from libs.common import codec
from libs.common.sitedir import SiteConfig
from services.transcript_worker import rendering
from services.transcript_worker.archive_store import Batch, from_ms, to_ms
from services.transcript_worker.batching import Batcher
from services.transcript_worker.transcript_builder import _in_order

SITE = SiteConfig(
    "4324-24618-10-8812",
    "Shop",
    {"colours": {"header_background": "#abcdef", "text": "red; background:url(x)"}},
    [],
    ["owner@shop.example", "not an address\r\nBcc: x@evil.example"],
    [("alice@example.org", "Alice")],
)


async def test_batcher_flushes_by_count_and_by_time() -> None:
    flushed: list[list[int]] = []

    async def flush(items: list[int]) -> None:
        flushed.append(items)

    batcher: Batcher[int] = Batcher(flush, max_size=3, max_wait_s=0.2)
    batcher.start()
    for i in range(7):
        batcher.add(i)
    await asyncio.sleep(0.05)
    assert flushed == [[0, 1, 2], [3, 4, 5]]  # full batches at once
    await asyncio.sleep(0.4)
    assert flushed[-1] == [6]  # the remainder once it has waited max_wait_s
    await batcher.close()


async def test_batcher_retries_a_failing_flush_with_the_same_items_and_loses_none() -> None:
    attempts: list[list[int]] = []

    async def flush(items: list[int]) -> None:
        attempts.append(list(items))
        if len(attempts) < 3:
            raise ConnectionError("MySQL is down")

    batcher: Batcher[int] = Batcher(flush, max_size=10, max_wait_s=0.01, backoff_s=(0.01,))
    batcher.start()
    batcher.add(1)
    batcher.add(2)
    for _ in range(100):
        if len(attempts) >= 3:
            break
        await asyncio.sleep(0.02)
    assert attempts == [[1, 2], [1, 2], [1, 2]]
    assert batcher.failures == 0
    await batcher.close()


def _chat(seq: int, sent_at_ms: int, internal: bool = False, **extra: object) -> codec.ChatMessage:
    return codec.ChatMessage(
        message_id=f"m{seq}-{sent_at_ms}",
        conversation_id="c1",
        site_id=SITE.site_id,
        visitor_id="v1",
        sender=codec.SenderKind.OPERATOR if internal else codec.SenderKind.VISITOR,
        body=f"line {seq}",
        sent_at_ms=sent_at_ms,
        seq=seq,
        internal=internal,
        **extra,
    )


def test_batch_merges_rows_per_visitor_and_conversation() -> None:
    batch = Batch()
    batch.add(_chat(2, 2000), "a")
    batch.add(_chat(1, 1000), "b")
    batch.add(
        codec.VisitorEvent(visitor_id="v1", site_id=SITE.site_id, kind=5, at_ms=1500, name="Eve", email="e@x.example"),
        "c",
    )
    assert batch.size == 3 and len(batch.messages) == 2
    conv = batch.conversations["c1"]
    assert (conv["started_at"], conv["last_message_at"], conv["last_seq"]) == (from_ms(1000), from_ms(2000), 2)
    assert batch.visitors["v1"]["name"] == "Eve" and batch.visitors["v1"]["first_seen_at"] == from_ms(1000)
    with pytest.raises(ValueError, match="does not store SiteStatus"):
        batch.add(codec.SiteStatus(site_id=SITE.site_id, online=True, operators_available=1, at_ms=1), "d")
    assert to_ms(from_ms(1_700_000_000_123)) == 1_700_000_000_123


def test_internal_notes_are_placed_by_time_among_lines_in_seq_order() -> None:
    ordered = _in_order([_chat(2, 3000), _chat(0, 2500, internal=True), _chat(1, 1000), _chat(3, 4000)])
    assert [(m.seq, m.internal) for m in ordered] == [(1, False), (0, True), (2, False), (3, False)]


def _transcript(name: str, email: str) -> codec.Transcript:
    return codec.Transcript(
        conversation_id="0123456789abcdef0123456789abcdef",
        site_id=SITE.site_id,
        visitor_id="v1",
        visitor_name=name,
        visitor_email=email,
        pages=[codec.TranscriptPage(url="https://shop.example/<x>", title="<b>t</b>", viewed_at_ms=1000)],
        messages=[
            _chat(1, 1000),
            _chat(0, 1500, internal=True, operator_jid="alice@example.org"),
            codec.ChatMessage(
                message_id="m2",
                conversation_id="c1",
                site_id=SITE.site_id,
                visitor_id="v1",
                sender=codec.SenderKind.OPERATOR,
                operator_jid="alice@example.org",
                body="</div><script>x()</script>",
                sent_at_ms=2000,
                seq=2,
            ),
        ],
        operator_jids=["alice@example.org"],
        started_at_ms=1000,
        closed_at_ms=3000,
        reason=codec.CloseReason.IDLE,
    )


def test_transcript_email_escapes_html_and_keeps_hostile_text_out_of_headers() -> None:
    outgoing = rendering.transcript_email(
        _transcript("Eve\r\nBcc: victim@evil.example\x00", "eve@x.example\r\nBcc: y@evil.example"),
        SITE,
        "Habla <transcripts@habla.example>",
    )
    assert outgoing.sender == "transcripts@habla.example" and outgoing.recipients == ["owner@shop.example"]
    mail = outgoing.parsed()
    raw = mail.as_string()
    header_block = raw.split("\n\n", 1)[0]
    assert "Bcc" not in header_block.replace("Subject: Chat with Eve Bcc: victim@evil.example", "")
    assert mail["Subject"] == "Chat with Eve Bcc: victim@evil.example on Shop"
    assert mail["Reply-To"] is None  # an address with a line break is no address
    assert mail["To"] == "owner@shop.example"
    assert mail["Message-ID"] == "<transcript.0123456789abcdef0123456789abcdef@habla.example>"
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "<script>x()</script>" not in html and "&lt;/div&gt;&lt;script&gt;" in html
    assert "https://shop.example/&lt;x&gt;" in html
    assert "#abcdef" in html and "url(x)" not in html  # only validated colours reach CSS
    assert "Internal note (not shown to the visitor)" in html
    assert "[INTERNAL NOTE, not shown to the visitor] Alice: line 0" in text
    assert "Alice: </div><script>x()</script>" in text  # plain text is not HTML-escaped
    assert "closed after inactivity" in text


def test_header_text_and_addresses_are_sanitised() -> None:
    assert rendering.header_text("a\r\n\tb\u2028c") == "a b c"
    assert len(rendering.header_text("x" * 500)) == rendering.HEADER_TEXT_MAX
    assert rendering.safe_address("bob@example.org", 'Bob "the builder"\n') is not None
    for bad in ("bob@example.org\r\nBcc: x@y.z", "bob", "<bob@example.org>", "a b@example.org", ""):
        assert rendering.safe_address(bad) is None, bad
    # An id with odd characters still makes a valid, stable Message-ID.
    odd = rendering.message_id("offline", "a b>c", "x@habla.example")
    assert odd == rendering.message_id("offline", "a b>c", "x@habla.example") and " " not in odd


def test_offline_email_says_who_wrote_and_replies_to_them() -> None:
    note = codec.OfflineMessage(
        message_id="n1",
        site_id=SITE.site_id,
        visitor_id="v1",
        name="Bob <b>",
        email="bob@visitor.example",
        body="call <i>me</i>",
        sent_at_ms=int(datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC).timestamp() * 1000),
    )
    mail = rendering.offline_email(note, SITE, "transcripts@habla.example").parsed()
    assert mail["Subject"] == "Bob <b> wrote you a note on Shop"
    assert mail["Reply-To"].addresses[0].addr_spec == "bob@visitor.example"
    assert "call &lt;i&gt;me&lt;/i&gt;" in mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "2026-01-02 00:00 UTC" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_worker_consumers_setting_selects_and_rejects_names() -> None:
    from libs.common.settings import Settings, SettingsError
    from services.transcript_worker.app import selected_consumers

    assert selected_consumers(Settings.from_env({})) == ["archive", "closer", "transcripts", "email"]
    assert selected_consumers(Settings.from_env({"HABLA_WORKER_CONSUMERS": " email, archive "})) == ["email", "archive"]
    with pytest.raises(SettingsError, match="HABLA_WORKER_CONSUMERS='archive,bogus'"):
        selected_consumers(Settings.from_env({"HABLA_WORKER_CONSUMERS": "archive,bogus"}))
