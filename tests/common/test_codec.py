from __future__ import annotations

import pytest

from libs.common import codec
from tests.factories import chat_message


def test_every_struct_round_trips_through_the_registry() -> None:
    msg = chat_message("hi", message_id="m", sent_at_ms=1)
    assert codec.decode("ChatMessage", codec.encode(msg)) == msg
    assert set(codec.REGISTRY) >= {
        "ChatMessage",
        "PageView",
        "VisitorEvent",
        "OperatorPresence",
        "ConversationClosed",
        "Transcript",
        "OfflineMessage",
        "SiteStatus",
    }


def test_unknown_type_is_a_decode_error() -> None:
    with pytest.raises(codec.DecodeError, match="unknown message type 'Nope'"):
        codec.decode("Nope", b"")


@pytest.mark.parametrize("garbage", [b"", b"\xff\xff\xff", b"\x18\x01a", b"not thrift at all"])
def test_garbage_is_a_decode_error(garbage: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode("ChatMessage", garbage)


def test_missing_required_fields_are_refused_both_ways() -> None:
    with pytest.raises(ValueError, match="lacks required field"):
        codec.encode(codec.ChatMessage(message_id="x"))
    partial = codec.encode_with(codec.contracts, "ChatMessage", message_id="x")
    with pytest.raises(codec.DecodeError, match="lacks required field"):
        codec.decode("ChatMessage", partial)


def test_only_contract_structs_are_encoded() -> None:
    with pytest.raises(TypeError):
        codec.encode(object())  # type: ignore[arg-type]
