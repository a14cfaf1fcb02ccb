"""Test data builders shared by the test modules (one place to change when a struct grows a field)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from libs.common import codec

# A well-formed site id (four groups of digits) no test's database needs to know.
SITE_ID = "4324-24618-10-8812"


def chat_message(body: str = "hello", *, seq: int = 1, **overrides: Any) -> Any:
    """A visitor's ChatMessage with a fresh message id, sent now; ``overrides`` replace
    any field (message_id, sent_at_ms, site_id …)."""
    fields: dict[str, Any] = {
        "message_id": uuid.uuid4().hex,
        "conversation_id": "c",
        "site_id": SITE_ID,
        "visitor_id": "v",
        "sender": codec.SenderKind.VISITOR,
        "body": body,
        "sent_at_ms": int(time.time() * 1000),
        "seq": seq,
    }
    return codec.ChatMessage(**(fields | overrides))
