"""Thrift codec: the only module that imports thriftpy2 (and Apache Thrift's C reader).

Messages travel as Thrift compact-protocol bytes; the AMQP ``type`` property names
the struct, so a reader can decode without guessing.

Decoding has two paths with one verdict:

* the reference: thriftpy2's pure-Python compact protocol, hardened (``_BoundedCompact``)
  so that hostile bytes cost work in proportion to their length, never to a number
  they declare, and so that invalid UTF-8 is refused rather than handed back as bytes;
* the fast path, when Apache Thrift's C extension (``thrift.protocol.fastbinary``)
  imports: it decodes into the same thriftpy2 classes about 10x faster, and the result
  is kept only if encoding it again gives back exactly the body. Then the body is the
  canonical encoding of a well-typed struct, which the reference decodes to the same
  struct. Anything else (the C reader refused, or the body is not canonical: unknown
  fields, trailing bytes, invalid UTF-8 it replaced with U+FFFD, a UUID field it skips)
  goes to the reference, whose verdict is the answer. So both paths accept and refuse
  the same bodies by construction, and honest messages take the fast one.

Encoding likewise: the C writer's bytes are kept when the C reader gives back an equal
struct (every value of the IDL's type: then thriftpy2 writes the same bytes); otherwise
thriftpy2 writes them, or raises as it always did.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.protocol import TCompactProtocolFactory
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.thrift import TPayload, TType
from thriftpy2.utils import serialize

try:  # optional: thrift is an sdist whose C++ extension needs g++ at install time
    from thrift.protocol import fastbinary as _fastbinary
except ImportError:  # pragma: no cover - exercised by forcing FAST off in tests
    _fastbinary = None

CONTENT_TYPE = "application/x-thrift-compact"
IDL_PATH = Path(__file__).resolve().parents[2] / "thrift" / "habla.thrift"

_PROTOCOL = TCompactProtocolFactory()  # type: ignore[no-untyped-call]

# The C reader imported; FAST: use it (tests and the bench set it False for the reference).
HAVE_C: bool = _fastbinary is not None
FAST: bool = HAVE_C

# Nesting of structs and skipped values the reference reads before refusing: Habla's
# IDL nests three deep; the C reader stops at 64 (kDefaultRecursionDepth) too.
MAX_DEPTH = 64
# A varint longer than this is not an i64 (the C reader's limit too); unbounded, a run
# of 0xff bytes would make thriftpy2 build ever larger ints (quadratic work).
MAX_VARINT_BYTES = 10
_MAX_SIZE = 2**31 - 1


class DecodeError(ValueError):
    """The bytes, or the type name, do not make a message we know."""


def load_idl(path: Path = IDL_PATH, module_name: str = "habla_thrift") -> Any:
    """Load an IDL file as a module of struct classes (also used for old IDL copies)."""
    return thriftpy2.load(str(path), module_name=module_name)


contracts: Any = load_idl()

# struct name -> struct class, for every struct in the IDL (the AMQP `type` property).
REGISTRY: dict[str, type[TPayload]] = {cls.__name__: cls for cls in contracts.__thrift_meta__["structs"]}

# Re-exported names so services write `codec.ChatMessage(...)`.
ChatMessage: Any = contracts.ChatMessage
PageView: Any = contracts.PageView
VisitorEvent: Any = contracts.VisitorEvent
OperatorPresence: Any = contracts.OperatorPresence
OperatorAction: Any = contracts.OperatorAction
ConversationClosed: Any = contracts.ConversationClosed
TranscriptPage: Any = contracts.TranscriptPage
Transcript: Any = contracts.Transcript
OfflineMessage: Any = contracts.OfflineMessage
SiteStatus: Any = contracts.SiteStatus
VisitorDelivery: Any = contracts.VisitorDelivery
SenderKind: Any = contracts.SenderKind
VisitorEventKind: Any = contracts.VisitorEventKind
Availability: Any = contracts.Availability
CloseReason: Any = contracts.CloseReason


def type_name(struct: TPayload) -> str:
    """The AMQP `type` property for a struct instance."""
    name = type(struct).__name__
    if name not in REGISTRY:
        raise TypeError(f"{name} is not a Habla contract struct")
    return name


def encode(struct: TPayload) -> bytes:
    """Compact-protocol bytes; ValueError if a required field is missing."""
    name = type_name(struct)
    missing = missing_required(struct)
    if missing:
        raise ValueError(f"{name} lacks required field(s) {', '.join(missing)}")
    if FAST:
        body = _encode_fast(struct)
        if body is not None:
            return body
    return bytes(serialize(struct, _PROTOCOL))


def decode(name: str | None, body: bytes) -> Any:
    """Decode bytes whose AMQP `type` is ``name``; DecodeError on anything wrong."""
    if not name or name not in REGISTRY:
        raise DecodeError(f"unknown message type {name!r}; expected one of {sorted(REGISTRY)}")
    try:
        struct = decode_struct(REGISTRY[name], body)
    except Exception as exc:  # thriftpy2 raises several unrelated types on garbage
        raise DecodeError(f"cannot decode {name}: {exc.__class__.__name__}: {exc}") from exc
    missing = missing_required(struct)
    if missing:
        raise DecodeError(f"{name} lacks required field(s) {', '.join(missing)}")
    return struct


def decode_struct(cls: type[TPayload], body: bytes) -> Any:
    """An instance of ``cls`` read from ``body`` (no required-field check); raises
    whatever the reference reader raises on bytes it refuses."""
    if FAST:
        struct = _decode_fast(cls, body)
        if struct is not None:
            return struct
    return decode_reference(cls, body)


def decode_reference(cls: type[TPayload], body: bytes) -> Any:
    """The pure-Python reader: thriftpy2's, bounded (see _BoundedCompact)."""
    struct = cls()
    _BoundedCompact(body).read_struct(struct)
    return struct


def missing_required(struct: TPayload) -> list[str]:
    """Names of required fields left unset. thriftpy2 neither checks nor refuses them:
    its spec tuples end with a bool "required" flag, which we read here."""
    return [
        spec[1] for spec in type(struct).thrift_spec.values() if spec[-1] is True and getattr(struct, spec[1]) is None
    ]


def encode_with(module: Any, struct_name: str, **fields: Any) -> bytes:
    """Encode a struct of another loaded IDL (old contract copies in tests)."""
    return bytes(serialize(getattr(module, struct_name)(**fields), _PROTOCOL))


def decode_with(module: Any, struct_name: str, body: bytes) -> Any:
    """Decode with another loaded IDL (old contract copies in tests)."""
    return decode_struct(getattr(module, struct_name), body)


# --- the reference reader ---------------------------------------------------------


class _BoundedCompact(TCompactProtocol):
    """thriftpy2's compact reader with the limits it lacks. Unbounded, it loops over a
    declared count of zero-byte (STOP) elements in a skipped field (2^32 iterations from
    a dozen bytes), builds ints from any run of varint bytes, hands back bytes for
    invalid UTF-8, and nests until RecursionError. Here every element costs at least one
    byte of the body, and the rest is capped."""

    def __init__(self, body: bytes) -> None:
        # BytesIO reads in C; a read past the end comes back short, which the fixed-size
        # reads refuse (unpack, [0]) and _read_size rules out for strings beforehand.
        self._input = io.BytesIO(body)
        self._size = len(body)
        super().__init__(self._input, decode_response=True, strict_decode=True)  # type: ignore[no-untyped-call]
        self._depth = 0

    def _remaining(self) -> int:
        return self._size - self._input.tell()

    def _varint(self) -> int:
        result = shift = 0
        for _ in range(MAX_VARINT_BYTES):
            byte = self._input.read(1)[0]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
        raise ValueError(f"varint longer than {MAX_VARINT_BYTES} bytes")

    def _read_size(self) -> int:
        size = self._varint()
        # Every string byte and every container element takes at least a byte.
        if size > _MAX_SIZE or size > self._remaining():
            raise ValueError(f"declared length {size} exceeds the {self._remaining()} bytes left")
        return size

    def _read_int(self) -> int:
        return _zigzag(self._varint())

    def _read_field_begin(self) -> tuple[None, int, int]:
        # thriftpy2's, with the bounded varint for a long-form field id.
        header: int = self._read_ubyte()  # type: ignore[no-untyped-call]
        if header & 0x0F == TType.STOP:
            return None, 0, 0
        delta = header >> 4
        fid = self._last_fid + delta if delta else _zigzag(self._varint())
        self._last_fid = fid
        ctype = header & 0x0F
        if ctype == 0x01:  # CompactType.TRUE: a bool field carries its value in the header
            self._bool_value = True
        elif ctype == 0x02:
            self._bool_value = False
        return None, self._get_ttype(ctype), fid  # type: ignore[no-untyped-call]

    def _read_collection_begin(self) -> tuple[int, int]:
        etype, size = super()._read_collection_begin()  # type: ignore[no-untyped-call]
        if size > self._remaining():  # a short form (<= 14) can still claim too much
            raise ValueError(f"list of {size} in {self._remaining()} bytes")
        if size and etype == TType.STOP:  # zero-byte elements: skipping them costs no input
            raise ValueError("list of STOP elements")
        return etype, size

    def _read_map_begin(self) -> tuple[int, int, int]:
        ktype, vtype, size = super()._read_map_begin()  # type: ignore[no-untyped-call]
        if size and TType.STOP in (ktype, vtype):
            raise ValueError("map of STOP keys or values")
        return ktype, vtype, size

    def read_struct(self, obj: Any) -> None:
        self._enter()
        try:
            super().read_struct(obj)  # type: ignore[no-untyped-call]
        finally:
            self._depth -= 1

    def skip(self, ttype: int) -> None:
        self._enter()
        try:
            if ttype in (TType.I16, TType.I32, TType.I64):
                self._read_int()  # thriftpy2's skip reads these with its unbounded varint
            else:
                super().skip(ttype)  # type: ignore[no-untyped-call]
        finally:
            self._depth -= 1

    def _enter(self) -> None:
        if self._depth >= MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH}")
        self._depth += 1


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


# --- the fast path: Apache Thrift's C reader into the same classes ---------------


class _FastInput:
    """What fastbinary.decode_compact reads off its protocol argument (module.cpp:
    ``trans``, two length limits) and off the transport (``cstringio_buf``, which it
    casts to io.BytesIO unchecked, so it must be one; ``cstringio_refill``, called when
    the buffer runs short: there is nothing more)."""

    __slots__ = ("container_length_limit", "cstringio_buf", "string_length_limit")

    def __init__(self, body: bytes) -> None:
        self.cstringio_buf = io.BytesIO(body)
        # Nothing in the body is longer than the body; the C reader also caps a
        # container's first allocation at the bytes left (thrift 0.25).
        self.string_length_limit = self.container_length_limit = len(body)

    @property
    def trans(self) -> _FastInput:
        return self

    def cstringio_refill(self, partial: bytes, size: int) -> io.BytesIO:
        raise EOFError(f"body ends before {size} more bytes")


def _apache_args(ttype: int, arg: Any) -> Any:
    """Apache's type arguments for a thriftpy2 spec's; KeyError if C cannot read it."""
    if ttype == TType.STRING:
        return "UTF8"  # str, as thriftpy2 decodes (it replaces bad UTF-8: the check catches it)
    if ttype == TType.STRUCT:
        return [arg, _apache_spec(arg)]
    if ttype in (TType.LIST, TType.SET):
        elem, elem_arg = arg if isinstance(arg, tuple) else (arg, None)
        return (elem, _apache_args(elem, elem_arg), False)
    if ttype == TType.MAP:
        (key, key_arg), (val, val_arg) = ((a if isinstance(a, tuple) else (a, None)) for a in arg)
        return (key, _apache_args(key, key_arg), val, _apache_args(val, val_arg), False)
    if ttype in (TType.BOOL, TType.BYTE, TType.I16, TType.I32, TType.I64, TType.DOUBLE):
        return None
    raise KeyError(ttype)  # BINARY (18 in thriftpy2) and anything else Apache lacks


def _apache_spec(cls: type[TPayload]) -> tuple[Any, ...]:
    """thriftpy2's {id: (ttype, name, [type arg,] required)} as Apache's spec: a tuple
    indexed by field id of (id, ttype, name, type args, default)."""
    spec = cls.thrift_spec
    if list(spec) != sorted(spec):  # thriftpy2 writes in this order, Apache by field id
        raise KeyError(cls)
    out: list[Any] = [None] * (max(spec, default=0) + 1)
    for fid, field in spec.items():
        out[fid] = (fid, field[0], field[1], _apache_args(field[0], field[2] if len(field) > 3 else None), None)
    return tuple(out)


_FAST_SPECS: dict[type, list[Any] | None] = {}


def _fast_spec(cls: type[TPayload]) -> list[Any] | None:
    if cls not in _FAST_SPECS:
        try:
            _FAST_SPECS[cls] = [cls, _apache_spec(cls)]
        except KeyError:
            _FAST_SPECS[cls] = None
    return _FAST_SPECS[cls]


def _decode_fast(cls: type[TPayload], body: bytes) -> Any | None:
    """The struct, or None: the C reader refused, or the body is not the canonical
    encoding of what it read (then only the reference may judge)."""
    spec = _fast_spec(cls)
    if spec is None or _fastbinary is None:
        return None
    struct = cls()
    try:
        _fastbinary.decode_compact(struct, _FastInput(body), spec)
        again = _fastbinary.encode_compact(struct, spec)
    except Exception:  # refused (EOFError, TypeError, OverflowError, TProtocolException …)
        return None
    return struct if again == body else None


def _encode_fast(struct: TPayload) -> bytes | None:
    """The C writer's bytes, or None (then thriftpy2 writes, or raises). They are kept
    only if the C reader gives back an equal struct: every value then had the type the
    IDL says (a tuple for a list, bytes for a string, 2 for a bool come back different),
    and for such structs both writers put out the same bytes, field by field in id order."""
    cls = type(struct)
    spec = _fast_spec(cls)
    if spec is None or _fastbinary is None:
        return None
    try:
        body: bytes = _fastbinary.encode_compact(struct, spec)
        back = cls()
        _fastbinary.decode_compact(back, _FastInput(body), spec)
    except Exception:  # OverflowError, TypeError, UnicodeEncodeError …: thriftpy2 decides
        return None
    return body if back == struct else None
