"""relay.persistently: retried while it fails, LineNotRelayed near the deadline."""

from __future__ import annotations

import time

import pytest

from services.im_gateway import relay
from services.im_gateway.outbox import XmppUnavailable


async def test_retries_until_the_work_succeeds() -> None:
    attempts = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("Redis is restarting")
        return "logged"

    assert await relay.persistently("logging", flaky, time.monotonic() + 10) == "logged"
    assert len(attempts) == 3


async def test_gives_up_before_the_deadline_with_the_reason() -> None:
    async def down() -> None:
        raise ConnectionError("Error 111 connecting")

    started = time.monotonic()
    with pytest.raises(relay.LineNotRelayed, match="Error 111"):
        await relay.persistently("logging", down, started + 0.5)


async def test_a_stream_that_is_down_is_not_retried() -> None:
    async def stream_down() -> None:
        raise XmppUnavailable("down")

    with pytest.raises(XmppUnavailable):
        await relay.persistently("replying", stream_down, time.monotonic() + 10)
