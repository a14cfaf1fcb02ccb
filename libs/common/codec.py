"""Thrift codec: the only module that imports thriftpy2.

Messages travel as Thrift compact-protocol bytes; the AMQP ``type`` property names
the struct, so a reader can decode without guessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.protocol import TCompactProtocolFactory
from thriftpy2.thrift import TPayload
from thriftpy2.utils import deserialize, serialize

CONTENT_TYPE = "application/x-thrift-compact"
IDL_PATH = Path(__file__).resolve().parents[2] / "thrift" / "habla.thrift"

_PROTOCOL = TCompactProtocolFactory()  # type: ignore[no-untyped-call]


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
    return bytes(serialize(struct, _PROTOCOL))


def decode(name: str | None, body: bytes) -> Any:
    """Decode bytes whose AMQP `type` is ``name``; DecodeError on anything wrong."""
    if not name or name not in REGISTRY:
        raise DecodeError(f"unknown message type {name!r}; expected one of {sorted(REGISTRY)}")
    try:
        struct = deserialize(REGISTRY[name](), body, _PROTOCOL)
    except Exception as exc:  # thriftpy2 raises several unrelated types on garbage
        raise DecodeError(f"cannot decode {name}: {exc.__class__.__name__}: {exc}") from exc
    missing = missing_required(struct)
    if missing:
        raise DecodeError(f"{name} lacks required field(s) {', '.join(missing)}")
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
    return deserialize(getattr(module, struct_name)(), body, _PROTOCOL)
