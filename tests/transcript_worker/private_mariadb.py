"""A private MariaDB server for outage tests: its own data folder, port and socket in a
temp dir, so stopping it harms nobody else's tests on the shared server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tools import prosody

MARIADBD = "/usr/sbin/mariadbd"


class PrivateMariaDB:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="habla-mariadb-"))
        self.port = prosody.free_port()
        self.process: subprocess.Popen[bytes] | None = None
        install = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={self.dir / 'data'}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root:@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def start(self, wait_s: float = 60) -> None:
        self.process = subprocess.Popen(
            [
                MARIADBD,
                "--no-defaults",
                f"--datadir={self.dir / 'data'}",
                f"--port={self.port}",
                f"--socket={self.dir / 'mysqld.sock'}",
                f"--pid-file={self.dir / 'mysqld.pid'}",
                f"--log-error={self.dir / 'error.log'}",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-log-bin",
                "--skip-name-resolve",
                # Small: this server holds one test's rows (the default 128M is for real use).
                "--innodb-buffer-pool-size=32M",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"private mariadbd exited; see {self.dir / 'error.log'}") from None
                time.sleep(0.1)
        raise RuntimeError(f"private mariadbd did not listen on {self.port} within {wait_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
