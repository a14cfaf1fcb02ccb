"""Contracts stay compatible: readers built from the frozen v1 IDL read today's messages
and today's readers read v1 messages, and no field was renumbered, retyped or dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from libs.common import codec

FROZEN = Path(__file__).parent / "habla_v1.thrift"


@pytest.fixture(scope="module")
def v1() -> Any:
    return codec.load_idl(FROZEN, module_name="habla_v1_thrift")


def _spec(module: Any, name: str) -> dict[int, tuple[Any, ...]]:
    return dict(getattr(module, name).thrift_spec)


def test_no_field_of_v1_was_renumbered_retyped_renamed_or_removed(v1: Any) -> None:
    for struct in v1.__thrift_meta__["structs"]:
        name = struct.__name__
        assert name in codec.REGISTRY, f"struct {name} was removed"
        now = _spec(codec.contracts, name)
        for field_id, old in _spec(v1, name).items():
            assert field_id in now, f"{name} field {field_id} ({old[1]}) was removed"
            assert now[field_id][0] == old[0], f"{name}.{old[1]} changed type"
            assert now[field_id][1] == old[1], f"{name} field {field_id} was renamed"
            assert now[field_id][-1] == old[-1], f"{name}.{old[1]} changed required-ness"
        for field_id in set(now) - set(_spec(v1, name)):
            assert now[field_id][-1] is False, f"{name}.{now[field_id][1]} was added as required"


def test_enum_values_were_only_added(v1: Any) -> None:
    for enum in v1.__thrift_meta__["enums"]:
        now = getattr(codec.contracts, enum.__name__)
        for label, value in enum._NAMES_TO_VALUES.items():
            assert now._NAMES_TO_VALUES.get(label) == value, f"{enum.__name__}.{label} changed"


def _sample(module: Any) -> Any:
    return module.ChatMessage(
        message_id="m-1",
        conversation_id="c-1",
        site_id="4324-24618-10-8812",
        visitor_id="v-1",
        sender=module.SenderKind.OPERATOR,
        operator_jid="op@localhost",
        body="héllo <b>",
        sent_at_ms=1_700_000_000_000,
        seq=7,
        page_url="https://example.com/",
        operator_name="Ana",
    )


def test_old_reader_reads_todays_messages(v1: Any) -> None:
    body = codec.encode(_sample(codec.contracts))
    old = codec.decode_with(v1, "ChatMessage", body)
    assert (old.body, old.seq, old.operator_jid, old.sender) == ("héllo <b>", 7, "op@localhost", 2)


def test_todays_reader_reads_old_messages(v1: Any) -> None:
    body = codec.encode_with(v1, "ChatMessage", **vars(_sample(v1)))
    assert codec.decode("ChatMessage", body).body == "héllo <b>"


def test_a_future_field_is_skipped_by_todays_reader(tmp_path: Path) -> None:
    """Proves the rule works: a v2 that adds a field (new id, optional) stays readable both ways."""
    future_idl = codec.IDL_PATH.read_text().replace(
        "  12: optional bool internal = false,",
        "  12: optional bool internal = false,\n"
        "  99: optional string future_field,\n"
        "  100: optional list<i64> future_list,",
    )
    path = tmp_path / "habla_future.thrift"
    path.write_text(future_idl)
    future = codec.load_idl(path, module_name="habla_future_thrift")
    fields = vars(_sample(future)) | {"future_field": "from the future", "future_list": [1, 2]}
    today = codec.decode("ChatMessage", codec.encode_with(future, "ChatMessage", **fields))
    assert today.body == "héllo <b>" and not hasattr(today, "future_field")
    back = codec.decode_with(future, "ChatMessage", codec.encode(_sample(codec.contracts)))
    assert back.seq == 7 and back.future_field is None
