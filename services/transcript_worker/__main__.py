"""`python -m services.transcript_worker`: archive, closer, transcripts and email consumers."""

from __future__ import annotations

import asyncio
import sys

from libs.common import logs
from libs.common.settings import Settings, SettingsError
from services.transcript_worker.app import run, selected_consumers


def main() -> None:
    try:
        settings = Settings.from_env()
        selected_consumers(settings)  # a typo in HABLA_WORKER_CONSUMERS fails here, in one line
    except SettingsError as exc:
        print(f"transcript_worker: error: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure("transcript_worker", settings)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
