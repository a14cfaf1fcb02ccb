"""Bounds for every number that arrives from outside (the broker, headers, Redis).

A number someone else chose must never size our work: one ``ConversationClosed`` with
``last_seq = 10**12`` once made the transcript builder allocate every sequence number
and the worker was OOM-killed. So every decoded struct is checked here before a
handler sees it (``check``), headers are read with ``header_int`` (never raises), and
code that loops still loops over what it really has, not over these bounds.
"""

from __future__ import annotations

from typing import Any

# A conversation longer than this is not a chat: ten million lines is one line a
# second for 115 days, far past the idle close and the 7-day log TTL.
MAX_SEQ = 10_000_000
# Timestamps are epoch milliseconds: not before 1970 and not past 2100-01-01 (any
# real clock, however skewed; still a valid MySQL DATETIME and Python datetime).
MAX_TIMESTAMP_MS = 4_102_444_800_000
# Counts of people (operators available on a site): far past any real site.
MAX_COUNT = 1_000_000
# Elements of one list field (a transcript's lines and pages, an operator's sites).
MAX_LIST = MAX_SEQ
# Our own retry counter (x-habla-attempt): retries are a handful of delays.
MAX_ATTEMPT = 1_000


class Implausible(ValueError):
    """A field's value is outside what any real message carries."""


def seq(value: Any, field: str = "seq") -> int:
    """A sequence number: 0 (none / internal note) to MAX_SEQ."""
    return _bounded(value, 0, MAX_SEQ, field)


def timestamp_ms(value: Any, field: str = "at_ms") -> int:
    return _bounded(value, 0, MAX_TIMESTAMP_MS, field)


def count(value: Any, field: str = "count", limit: int = MAX_COUNT) -> int:
    return _bounded(value, 0, limit, field)


def _bounded(value: Any, low: int, high: int, field: str) -> int:
    # bool is an int in Python; a True where a number belongs is a wrong type.
    if isinstance(value, bool) or not isinstance(value, int):
        raise Implausible(f"{field} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise Implausible(f"{field}={value} is outside {low}..{high}")
    return value


def header_int(headers: Any, name: str, default: int = 0, high: int = MAX_ATTEMPT) -> int:
    """An integer header, or ``default`` if absent, non-numeric or out of 0..high.

    Never raises: a header is parsed before the message is settled, and an exception
    there once left messages unacknowledged until the channel closed."""
    raw = headers.get(name) if isinstance(headers, dict) else None
    if isinstance(raw, bool):
        return default
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode("ascii", "replace")
    if isinstance(raw, str):
        text = raw.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            return default
        raw = int(text)
    if not isinstance(raw, int) or not 0 <= raw <= high:
        return default
    return raw


# --- whole structs -------------------------------------------------------------------

# Thrift type ids (thriftpy2's TType) of the fields we look at.
_I08, _I16, _I32, _I64, _STRING, _STRUCT, _LIST, _SET = 3, 6, 8, 10, 11, 12, 15, 14


def check(struct: Any) -> None:
    """Raise Implausible for any numeric field of a decoded Habla struct that is out of
    bounds, recursively (a Transcript's lines, a VisitorDelivery's message).

    The rule is by field name, so a new field is covered as soon as it follows the
    naming of the IDL: ``*seq`` are sequence numbers, ``*_ms`` timestamps, other
    integers counts; enum fields must hold one of the enum's values. Strings must be
    text: plain thriftpy2 hands back *bytes* for invalid UTF-8 (a lone surrogate, say),
    which MySQL then refuses (a batch retried forever) and XML cannot carry; codec.decode
    now refuses such bodies itself, and this stays for structs built any other way."""
    _check(struct, type(struct).__name__, depth=0)


def _text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise Implausible(f"{where} is not valid UTF-8 text")


def _check(struct: Any, path: str, depth: int) -> None:
    if depth > 4:  # the IDL nests three deep at most (Transcript > ChatMessage)
        raise Implausible(f"{path} nests deeper than any Habla message")
    spec = getattr(type(struct), "thrift_spec", None)
    if not isinstance(spec, dict):
        raise Implausible(f"{path} is not a Habla struct")
    for field_spec in spec.values():
        ttype, name = field_spec[0], field_spec[1]
        value = getattr(struct, name, None)
        if value is None:
            continue
        where = f"{path}.{name}"
        if ttype == _STRING:
            _text(value, where)
        elif ttype == _STRUCT:
            _check(value, where, depth + 1)
        elif ttype in (_LIST, _SET):
            if len(value) > MAX_LIST:
                raise Implausible(f"{where} has {len(value)} elements; at most {MAX_LIST}")
            inner = field_spec[2]
            if isinstance(inner, tuple) and inner[0] == _STRUCT:
                for index, item in enumerate(value):
                    _check(item, f"{where}[{index}]", depth + 1)
            elif inner == _STRING:
                for index, item in enumerate(value):
                    _text(item, f"{where}[{index}]")
        elif ttype in (_I08, _I16, _I32, _I64):
            enum = field_spec[2] if len(field_spec) > 3 else None
            if enum is not None and hasattr(enum, "_VALUES_TO_NAMES"):
                if value not in enum._VALUES_TO_NAMES:
                    raise Implausible(f"{where}={value} is not a {enum.__name__}")
            elif name.endswith("seq"):
                seq(value, where)
            elif name.endswith("_ms"):
                timestamp_ms(value, where)
            else:
                count(value, where)
