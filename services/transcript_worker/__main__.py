"""`python -m services.transcript_worker`: archive, closer, transcripts and email consumers."""

from __future__ import annotations

import asyncio
import sys

from libs.common import logs
from libs.common.settings import EXIT_CONFIG, SettingsError
from libs.common.startup import settings_or_exit
from services.transcript_worker.app import run, selected_consumers


def main() -> None:
    settings = settings_or_exit("transcript_worker")
    try:
        selected_consumers(settings)  # a typo in HABLA_WORKER_CONSUMERS fails here, in one line
    except SettingsError as exc:
        print(f"transcript_worker: refusing to start: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    logs.configure("transcript_worker", settings)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
