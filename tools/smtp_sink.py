"""Development SMTP sink: accepts every mail on HABLA_SMTP_HOST:HABLA_SMTP_PORT and
saves it as a .eml file under <HABLA_STATE_DIR>/mail, so a person can read what the
transcript worker sent (open the file in any mail client, or `less` it).

`make run` starts it (tools/devstack.py DEV_HELPERS). Never use it in production: it
accepts mail from anyone on the listening address and delivers nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from libs.common import logs
from libs.common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
_counter = itertools.count(1)


class SaveToFolder:
    """aiosmtpd handler: one .eml file per accepted message."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        header = f"X-Habla-Sink-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
        name = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{next(_counter):05d}.eml"
        (self.folder / name).write_bytes(header + content)
        print(f"smtp_sink: saved {self.folder / name} for {', '.join(envelope.rcpt_tos)}", flush=True)
        return "250 Message accepted for delivery"


async def serve(host: str, port: int, folder: Path) -> asyncio.AbstractServer:
    handler: Any = SaveToFolder(folder)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: SMTP(handler, hostname="habla-smtp-sink"), host, port)


async def _main() -> None:
    settings = Settings.from_env()
    logs.configure("smtp_sink", settings)
    # aiosmtpd logs every SMTP command at INFO; one "saved" line per mail is enough.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    folder = (ROOT / settings.state_dir / "mail").resolve()
    server = await serve(settings.smtp_host, settings.smtp_port, folder)
    print(f"smtp_sink: listening on {settings.smtp_host}:{settings.smtp_port}, saving to {folder}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
