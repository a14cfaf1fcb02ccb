"""`python -m services.transcript_worker`: archive, closer, transcripts and email consumers."""

from __future__ import annotations

import asyncio

from libs.common import logs
from libs.common.settings import Settings
from services.transcript_worker.app import run


def main() -> None:
    settings = Settings.from_env()
    logs.configure("transcript_worker", settings)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
