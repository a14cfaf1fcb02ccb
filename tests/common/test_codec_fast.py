"""codec's two decoding paths (Apache Thrift's C reader, the bounded thriftpy2 reader)
give the same verdict and the same struct on every body: honest, mangled or hostile."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from libs.common import codec

TEXT = ["", "a", "naïve ☕ 𝄞", "<x>&'\"", "x" * 300, "\x00\x01ctl", "line\nbreak", "\ufffd is a real character"]
I32 = (-(2**31), 2**31 - 1)
I64 = (-(2**63), 2**63 - 1)

# Compact-protocol pieces for hand-made bodies.
STOP = b"\x00"


def _value(rnd: random.Random, ttype: int, arg: Any) -> Any:
    if ttype == 11:
        return rnd.choice(TEXT)
    if ttype == 2:
        return rnd.random() < 0.5
    if ttype == 8:
        if arg is not None and hasattr(arg, "_VALUES_TO_NAMES"):
            return rnd.choice(list(arg._VALUES_TO_NAMES))
        return rnd.choice([0, 1, -1, *I32, rnd.randint(*I32)])
    if ttype == 10:
        return rnd.choice([0, 1, -1, *I64, rnd.randint(*I64)])
    if ttype == 12:
        return _struct(rnd, arg)
    if ttype == 15:
        elem, elem_arg = arg if isinstance(arg, tuple) else (arg, None)
        return [_value(rnd, elem, elem_arg) for _ in range(rnd.choice([0, 1, 3, 14, 15, 20]))]
    raise NotImplementedError(ttype)


def _struct(rnd: random.Random, cls: Any) -> Any:
    """A struct with every required field and a random choice of optional ones."""
    fields = {}
    for spec in cls.thrift_spec.values():
        if spec[-1] is True or rnd.random() < 0.6:
            fields[spec[1]] = _value(rnd, spec[0], spec[2] if len(spec) > 3 else None)
    return cls(**fields)


def _samples(seed: int, per_type: int) -> Iterator[tuple[str, Any, bytes]]:
    rnd = random.Random(seed)
    for name, cls in sorted(codec.REGISTRY.items()):
        for _ in range(per_type):
            struct = _struct(rnd, cls)
            yield name, struct, codec.encode(struct)


def _verdict(name: str, body: bytes, *, fast: bool) -> Any:
    codec.FAST = fast
    try:
        return codec.decode(name, body)
    except codec.DecodeError:
        return "refused"
    finally:
        codec.FAST = codec.HAVE_C


def _both(name: str, body: bytes) -> Any:
    """The verdict, asserted equal on both paths."""
    fast, reference = _verdict(name, body, fast=True), _verdict(name, body, fast=False)
    assert fast == reference, (name, body[:80])
    return fast


needs_c = pytest.mark.skipif(not codec.HAVE_C, reason="thrift's C extension is not importable")


def test_random_structs_of_every_type_decode_alike_on_both_paths() -> None:
    count = 0
    for name, struct, body in _samples(seed=1, per_type=60):
        assert _both(name, body) == struct
        count += 1
    assert count == 60 * len(codec.REGISTRY)


@needs_c
def test_honest_messages_take_the_fast_path() -> None:
    """The C reader's result is kept for canonical bodies (else it would only add cost)."""
    for name, struct, body in _samples(seed=2, per_type=20):
        assert codec._decode_fast(codec.REGISTRY[name], body) == struct, name


def test_the_reference_reader_serves_when_the_c_one_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_c(cls: Any, body: bytes) -> Any:
        raise AssertionError("the fast path ran while FAST is off")

    monkeypatch.setattr(codec, "_decode_fast", no_c)
    monkeypatch.setattr(codec, "FAST", False)
    for name, struct, body in _samples(seed=3, per_type=5):
        assert codec.decode(name, body) == struct
    with pytest.raises(codec.DecodeError):
        codec.decode("ChatMessage", b"\x18\x01a")


def test_mangled_bodies_get_the_same_verdict_on_both_paths() -> None:
    rnd = random.Random(4)
    verdicts: dict[str, int] = {"refused": 0, "accepted": 0}
    for name, _, body in _samples(seed=5, per_type=40):
        cut = rnd.randint(0, len(body))
        spot = rnd.randrange(len(body))
        for bad in (
            body[:cut],
            body[:spot] + bytes([rnd.getrandbits(8)]) + body[spot + 1 :],
            body[:spot] + bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 8))) + body[spot:],
            bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 80))),
            body + bytes(rnd.getrandbits(8) for _ in range(3)),  # trailing bytes
        ):
            verdicts["refused" if _both(name, bad) == "refused" else "accepted"] += 1
    assert verdicts["refused"] > 100 and verdicts["accepted"] > 100, verdicts  # both kinds were tried


def test_every_truncation_of_a_transcript_is_judged_alike() -> None:
    _, _, body = next(item for item in _samples(seed=6, per_type=3) if item[0] == "Transcript")
    for cut in range(len(body)):
        _both("Transcript", body[:cut])


def _chat(**fields: Any) -> tuple[bytes, bytes]:
    """A ChatMessage body split before its final STOP, so fields can be appended."""
    base: dict[str, Any] = {
        "message_id": "m",
        "conversation_id": "c",
        "site_id": "s",
        "visitor_id": "v",
        "sender": 1,
        "body": "MARKMARK",
        "sent_at_ms": 1,
        "seq": 1,
    }
    body = codec.encode(codec.ChatMessage(**(base | fields)))
    assert body.endswith(STOP)
    return body[:-1], STOP


def _unknown(ctype: int, payload: bytes, fid: int = 100) -> bytes:
    """A field the IDL lacks, long-form header: type byte, zigzag varint id."""
    return bytes([ctype]) + _varint(fid << 1) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_invalid_utf8_and_encoded_lone_surrogates_are_refused_on_both_paths() -> None:
    head, tail = _chat()
    body = head + tail
    for bad in (b"\xed\xa0\x80zzzzz", b"\xff\xfe\x00zzzzz", b"ab\xc3", b"\xf4\x90\x80\x80zzzz"):
        assert _both("ChatMessage", body.replace(b"MARKMARK", bad.ljust(8, b"z")[:8])) == "refused", bad
    # U+FFFD written by the sender is text like any other.
    honest = codec.encode(codec.ChatMessage(**(vars(codec.decode("ChatMessage", body)) | {"body": "\ufffd"})))
    assert _both("ChatMessage", honest).body == "\ufffd"


@pytest.mark.parametrize("declared", [15, 1000, 2**31 - 1, 2**32 - 1])
def test_huge_declared_lengths_are_refused_without_work_in_proportion(declared: int) -> None:
    head, tail = _chat()
    long_list = b"\xf8" + _varint(declared)  # a list of i32 claiming `declared` elements
    bodies = [
        head + _unknown(0x09, long_list) + b"\x02" * 10 + tail,  # skipped (unknown field)
        head + _unknown(0x08, _varint(declared) + b"x" * 10) + tail,  # a string longer than the body
        head + _unknown(0x0B, _varint(declared) + b"\x55" + b"\x02" * 10) + tail,  # a map of i32 -> i32
    ]
    if declared < 2**32:  # OperatorPresence.site_ids is a known list<string>: read, not skipped
        presence = codec.encode(codec.OperatorPresence(operator_jid="o", availability=1, at_ms=1, site_ids=[]))
        bodies.append(presence.replace(b"\x19\x08", b"\x19\xf8" + _varint(declared), 1))
    for body in bodies:
        assert _both("ChatMessage" if body.startswith(head) else "OperatorPresence", body) == "refused"


def test_zero_byte_elements_cannot_make_a_loop() -> None:
    """thriftpy2 skipped a list of 2^32 STOP elements one no-op at a time."""
    head, tail = _chat()
    for header in (b"\xe0", b"\xf0" + _varint(2**32 - 1), b"\xf0" + _varint(5)):
        assert _both("ChatMessage", head + _unknown(0x09, header) + tail) == "refused"
    assert _both("ChatMessage", head + _unknown(0x0B, _varint(5) + b"\x00") + tail) == "refused"
    # An empty list of STOP is just an empty list.
    assert _both("ChatMessage", head + _unknown(0x09, b"\x00") + tail) != "refused"


def test_nesting_is_bounded_alike() -> None:
    head, tail = _chat()
    verdicts = {}
    for depth in (*range(1, 80), 500, 5000):
        nested = _unknown(0x0C, b"\x1c" * (depth - 1) + STOP * depth)
        verdicts[depth] = _both("ChatMessage", head + nested + tail) != "refused"
    assert verdicts[1] and verdicts[10] and not verdicts[500] and not verdicts[5000]
    lists = _unknown(0x09, b"\x19" * 5000 + b"\x00")  # lists of lists
    assert _both("ChatMessage", head + lists + tail) == "refused"


def test_long_varints_are_refused() -> None:
    head, tail = _chat()
    assert _both("ChatMessage", head + _unknown(0x06, b"\xff" * 100_000 + b"\x01") + tail) == "refused"
    assert _both("ChatMessage", head + _unknown(0x06, b"\xff" * 9 + b"\x01") + tail) != "refused"
    long_id = b"\x05" + b"\xff" * 100_000 + b"\x01\x02"  # a field id as a 100 kB varint
    assert _both("ChatMessage", head + long_id + tail) == "refused"


def test_unknown_fields_and_trailing_bytes_are_judged_alike() -> None:
    head, tail = _chat()
    extras = [
        _unknown(0x08, b"\x03abc"),
        _unknown(0x06, b"\x02"),
        _unknown(0x0C, b"\x18\x01a\x00"),
        _unknown(0x09, b"\x38abc") * 3,
        _unknown(0x0D, b"u" * 16),  # UUID: Apache's reader knows it, thriftpy2 does not
        _unknown(0x0E, b""),
    ]
    for extra in extras:
        _both("ChatMessage", head + extra + tail)
    assert _both("ChatMessage", head + extras[0] + tail) != "refused"
    assert _both("ChatMessage", head + tail + b"trailing") != "refused"


# --- encoding -------------------------------------------------------------------------


def _encoded(struct: Any, *, fast: bool) -> Any:
    codec.FAST = fast
    try:
        return codec.encode(struct)
    except Exception as exc:
        return type(exc)
    finally:
        codec.FAST = codec.HAVE_C


def _encoded_both(struct: Any) -> Any:
    fast, reference = _encoded(struct, fast=True), _encoded(struct, fast=False)
    assert fast == reference, struct
    return fast


def test_random_structs_encode_to_the_same_bytes_on_both_paths() -> None:
    for name, struct, body in _samples(seed=7, per_type=60):
        assert _encoded_both(struct) == body, name
        if codec.HAVE_C:
            assert codec._encode_fast(struct) == body, name  # and the C writer did it


class _Text(str):
    pass


@pytest.mark.parametrize(
    "field, value",
    [
        ("seq", True),  # an int field holding a bool
        ("seq", 2**63),  # out of i64
        ("seq", -(2**63) - 1),
        ("seq", 1.0),
        ("seq", "1"),
        ("sender", 2**31),  # out of i32
        ("internal", 2),  # a bool field holding an int
        ("internal", 1),
        ("internal", "yes"),
        ("body", b"bytes"),  # a string field holding bytes
        ("body", "\ud800 lone surrogate"),
        ("body", _Text("a str subclass")),
        ("body", 5),
    ],
)
def test_odd_values_are_encoded_or_refused_alike(field: str, value: Any) -> None:
    head, tail = _chat()
    struct = codec.decode("ChatMessage", head + tail)
    setattr(struct, field, value)
    _encoded_both(struct)


def test_odd_containers_and_nesting_are_encoded_or_refused_alike() -> None:
    presence = codec.OperatorPresence(operator_jid="o", availability=1, at_ms=1, site_ids=["a"])
    for site_ids in (("a", "b"), ["a", None], ["a", b"b"], "ab", iter(["a"]), {"a"}):
        presence.site_ids = site_ids
        _encoded_both(presence)
    head, tail = _chat()
    line = codec.decode("ChatMessage", head + tail)
    delivery = codec.VisitorDelivery(visitor_id="v", site_id="s", message=line)
    assert _encoded_both(delivery) == codec.encode(delivery)
    delivery.message = codec.OperatorAction(action_id="a")  # the wrong struct in a struct field
    _encoded_both(delivery)
    line.extra = "not in the IDL"
    delivery.message = line
    _encoded_both(delivery)
