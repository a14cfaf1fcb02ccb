"""Parsing what a widget sends (HTTP bodies and WebSocket frames) without trusting it.

Everything here fails with ``Invalid`` (a 400 the sender can act on), never with an
exception a handler did not expect: a body of 30,000 ``[`` overflows json's recursion,
and a JSON ``"\\ud800"`` escape is valid JSON but not text (a lone surrogate cannot be
encoded to UTF-8, so it would fail later in Redis, Thrift or the operator's XMPP).
"""

from __future__ import annotations

import json
import re
from typing import Any

from services.rpc_frontend.chat import Invalid

# The log's sequence numbers start at 1 and grow by one per line; no conversation gets
# near a billion lines, and a bound keeps "after + batch" inside Redis's 64-bit range.
MAX_SEQ = 10**9
_SEQ_RE = re.compile(r"[0-9]{1,10}")  # ASCII digits only: int() also reads "٣" as 3


def _reject_constant(name: str) -> Any:
    raise Invalid(f"{name} is not a JSON number")


def json_object(raw: bytes | str) -> dict[str, Any]:
    """The JSON object in ``raw``; Invalid (with a reason) for anything else."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise Invalid("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise Invalid(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Invalid("request body must be a JSON object")
    try:
        # Bounded by the body limit; C code, no recursion problem for what loads accepted.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("every string must be valid Unicode text (not a lone surrogate such as \\ud800)") from None
    return value


def seq_argument(raw: str) -> int:
    """A sequence number from a query string (?after=N): 0 to MAX_SEQ, ASCII digits."""
    if not _SEQ_RE.fullmatch(raw) or int(raw) > MAX_SEQ:
        raise Invalid(f"after must be a whole number from 0 to {MAX_SEQ} (the last seq the widget has)")
    return int(raw)
