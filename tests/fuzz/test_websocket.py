"""hypothesis-generated WebSocket frames against a live visitor's socket.

Every frame — any text, any bytes, any JSON, the real message types with values of
every type, nesting far past the recursion limit — gets an answer or is ignored; the
socket stays open, a ping sent after the batch is answered (Tornado reads the next
frame only when the last one's handler returned, so the pong proves all were handled),
no error is a 5xx and the frontend logs no unhandled exception.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import tornado.websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import FuzzTarget

FRAMES_PER_EXAMPLE = 8
EXAMPLES = 150  # ~1,200 frames in well under a minute

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
message_types = st.sampled_from(["send", "typing", "ping", "", "SEND", "send\n"]) | json_values
real_shapes = st.fixed_dictionaries(
    {"type": message_types},
    optional={
        "message_id": st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True) | json_values,
        "body": st.text(max_size=300) | json_values,
        "typing": json_values,
    },
)
frames = st.one_of(
    real_shapes.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=40_000).map(lambda depth: "[" * depth),
    st.integers(min_value=1, max_value=5_000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    # A lone surrogate as JSON escapes it: valid JSON, not valid text.
    st.sampled_from(['{"type": "send", "message_id": "surrogate-1", "body": "\\ud800"}', '"\\udfff"']),
)


async def _exchange(url: str, batch: list[str | bytes]) -> list[dict[str, Any]]:
    socket = await tornado.websocket.websocket_connect(url, max_message_size=10 * 1024 * 1024)
    try:
        for frame in batch:
            await socket.write_message(frame, binary=isinstance(frame, bytes))
        await socket.write_message(json.dumps({"type": "ping"}))
        seen: list[dict[str, Any]] = []
        while True:
            raw = await asyncio.wait_for(socket.read_message(), 30)
            assert raw is not None, f"the server closed the socket (code {socket.close_code}) after {batch!r}"
            event = json.loads(raw)
            seen.append(event)
            if event.get("type") == "pong" and _pongs(seen) > _pings(batch):
                return seen
    finally:
        socket.close()
        # Wait for the closing handshake, so the TCP socket is really closed in this loop.
        while await asyncio.wait_for(socket.read_message(), 30) is not None:
            pass


def _pings(batch: list[str | bytes]) -> int:
    """Frames in the batch that are themselves a valid ping (each gets a pong too)."""
    count = 0
    for frame in batch:
        try:
            data = json.loads(frame)
        except (ValueError, RecursionError):
            continue
        count += isinstance(data, dict) and data.get("type") == "ping"
    return count


def _pongs(seen: list[dict[str, Any]]) -> int:
    return sum(event.get("type") == "pong" for event in seen)


@pytest.mark.slow
def test_generated_frames_never_break_the_socket(fuzz_target: FuzzTarget) -> None:
    url = fuzz_target.url.replace("http", "ws") + f"/api/sites/{fuzz_target.site_id}/ws?token={fuzz_target.token}"
    counts = {"frames": 0, "errors": 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(frames, min_size=1, max_size=FRAMES_PER_EXAMPLE))
    def batch_is_handled(batch: list[str | bytes]) -> None:
        seen = asyncio.run(_exchange(url, batch))
        errors = [event for event in seen if event.get("type") == "error"]
        assert all(400 <= int(event["status"]) < 500 for event in errors), errors
        counts["frames"] += len(batch)
        counts["errors"] += len(errors)

    batch_is_handled()
    assert fuzz_target.alive()
    assert fuzz_target.server_errors_logged() == []
    print(f"websocket fuzz: {counts['frames']} frames, {counts['errors']} clear 4xx errors, 0 crashes")
