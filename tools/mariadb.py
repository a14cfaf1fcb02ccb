"""A MariaDB of our own: a fresh datadir (mariadb-install-db) in a temp folder, one server.

For `make cluster` (started inside the database host's namespace). Nothing is read from
/etc/mysql (--no-defaults), so the machine's own server and its settings are untouched.
Root logs in over the folder's socket only; services get a user of their own with a
random password, allowed from the layout's subnet.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools import daemons


@dataclass
class MariaDB:
    dir: Path
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "mysqld.sock"

    def sql(self, statement: str) -> None:
        subprocess.run(
            ["mariadb", "--no-defaults", "-uroot", f"--socket={self.socket}", "-e", statement],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


def start(host: str = "127.0.0.1", port: int = 3306, timeout_s: float = 60) -> MariaDB:
    server = MariaDB(Path(tempfile.mkdtemp(prefix="habla-mariadb-")), host, port)
    try:
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={server.dir / 'data'}",
             "--auth-root-authentication-method=normal", "--skip-test-db", "--user=root"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        log = open(server.dir / "mariadbd.log", "ab")  # noqa: SIM115 (closed with the process)
        server.process = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={server.dir / 'data'}", f"--socket={server.socket}",
             f"--pid-file={server.dir / 'mariadbd.pid'}", f"--bind-address={host}", f"--port={port}",
             "--user=root", "--skip-log-bin", "--innodb-buffer-pool-size=64M", "--skip-name-resolve"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while not (daemons.listening(host, port) and server.socket.exists()):
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd did not start; see {server.dir / 'mariadbd.log'}")
            time.sleep(0.1)
    except BaseException:
        server.close()
        raise
    return server


def add_user(server: MariaDB, user: str, password: str, database: str, subnet: str) -> None:
    """A database and a user allowed from ``subnet`` (e.g. "10.1.2.%") with all rights on it."""
    server.sql(
        f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"
        f"CREATE USER IF NOT EXISTS '{user}'@'{subnet}' IDENTIFIED BY '{password}';"
        f"GRANT ALL ON `{database}`.* TO '{user}'@'{subnet}';"
    )
