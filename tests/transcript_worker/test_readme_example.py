"""The README's example downstream consumer of habla.transcripts runs and reads a
published Transcript."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from pathlib import Path

from libs.common import codec, topology
from libs.common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### For downstream consumers") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README lost its example consumer"
    return match.group(1)


async def test_readme_example_consumer_prints_a_published_transcript(settings: Settings, make_bus) -> None:
    bus = await make_bus("readme")
    queue_name = f"test.readme.{uuid.uuid4().hex[:8]}"
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(queue_name, durable=True)
    await queue.bind(await channel.get_exchange(topology.TRANSCRIPTS))
    transcript = codec.Transcript(
        conversation_id=uuid.uuid4().hex,
        site_id="4324-24618-10-8812",
        visitor_id="v1",
        visitor_email="reader@example.org",
        pages=[],
        messages=[
            codec.ChatMessage(
                message_id="m1",
                conversation_id="c",
                site_id="4324-24618-10-8812",
                visitor_id="v1",
                sender=codec.SenderKind.VISITOR,
                body="hi",
                sent_at_ms=1,
                seq=1,
            )
        ],
        operator_jids=[],
        started_at_ms=1,
        closed_at_ms=2,
        reason=codec.CloseReason.IDLE,
    )
    await bus.publish(topology.TRANSCRIPTS, "", transcript, message_id=transcript.conversation_id)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _example(),
        cwd=ROOT,
        env={**os.environ, "HABLA_AMQP_URL": settings.amqp_url, "QUEUE": queue_name},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
    finally:
        process.terminate()
        await process.wait()
        await queue.delete(if_unused=False, if_empty=False)
        await channel.close()
    assert line.decode().split() == [transcript.conversation_id, "reader@example.org", "1", "lines"]
