"""Throwaway corners of the shared servers, for tests and benchmarks.

A sandbox is a RabbitMQ vhost, a Redis key prefix and a MariaDB database that share
one random tag, and are all removed afterwards. Several runs (other worktrees, CI, a
benchmark next to a test run) share this machine's servers at once: a name without a
random tag is someone else's name too, and removing it breaks their run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from libs.common import db, partitions
from libs.common.settings import Settings
from tools import prosody

SERVER_URL = "mysql+pymysql://root:@127.0.0.1:3306/"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _add_vhost(vhost: str) -> None:
    """The vhost and guest's permissions on it in one rabbitmqctl call (definitions are
    merged into the broker's): each call boots an Erlang VM, 1-2 s on a busy machine,
    and the test suite makes a sandbox per isolated gateway test."""
    definitions = {
        "vhosts": [{"name": vhost}],
        "permissions": [{"user": "guest", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}],
    }
    # On stdin: Debian's rabbitmqctl runs as the rabbitmq user, who could not read our temp file.
    subprocess.run(
        ["rabbitmqctl", "-q", "import_definitions", "--format", "json"],
        input=json.dumps(definitions).encode(),
        check=True,
        capture_output=True,
        timeout=60,
    )


@dataclass(frozen=True)
class Sandbox:
    label: str
    tag: str
    settings: Settings
    own_database: bool

    @property
    def vhost(self) -> str:
        return f"habla-{self.label}-{self.tag}"

    @property
    def database(self) -> str | None:
        return sa.make_url(self.settings.mysql_url).database if self.own_database else None


def create(
    label: str, *, base: Settings | None = None, own_database: bool = True, migrate: bool = True, **overrides: Any
) -> Sandbox:
    """A vhost, a Redis prefix and (own_database) a migrated database named after ``label``."""
    base = base or Settings.from_env()
    tag = uuid.uuid4().hex[:8]
    vhost = f"habla-{label}-{tag}"
    _add_vhost(vhost)
    names: dict[str, Any] = {
        "amqp_url": f"amqp://guest:guest@127.0.0.1:5672/{urllib.parse.quote(vhost, safe='')}",
        "redis_prefix": f"habla-{label}-{tag}:",
        "frontend_id": f"{label}-{tag}",
    }
    if own_database:
        names["mysql_url"] = (
            f"mysql+pymysql://root:@127.0.0.1:3306/habla_{label.replace('-', '_')}_{tag}?charset=utf8mb4"
        )
    settings = dataclasses.replace(base, **{**names, **overrides})
    sandbox = Sandbox(label, tag, settings, own_database)
    if own_database and migrate:
        db.migrate(settings)
    return sandbox


def remove(sandbox: Sandbox) -> None:
    """Delete the vhost, drop the database, delete every key under the prefix."""
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", sandbox.vhost], capture_output=True, timeout=60)
    if sandbox.database:
        server = sa.create_engine(SERVER_URL)
        with server.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{sandbox.database}`"))
        server.dispose()
    client = redis.Redis.from_url(sandbox.settings.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{sandbox.settings.redis_prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextmanager
def sandboxed(label: str, **kwargs: Any) -> Iterator[Settings]:
    """``with sandboxed("bench-worker") as settings:`` … everything removed on exit."""
    sandbox = create(label, **kwargs)
    try:
        yield sandbox.settings
    finally:
        remove(sandbox)


def prosody_config(settings: Settings, folder: Path | None = None) -> prosody.ProsodyConfig:
    """A Prosody config for ``settings``' XMPP names on free ports, in a fresh folder."""
    return prosody.ProsodyConfig(
        dir=folder or Path(tempfile.mkdtemp(prefix="habla-prosody-")),
        domain=settings.xmpp_domain,
        component_domain=settings.xmpp_component_domain,
        partition_domains=tuple(partitions.all_domains(settings)),
        component_secret=settings.xmpp_component_secret,
        c2s_port=prosody.free_port(),
        component_port=prosody.free_port(),
    )


def with_prosody_ports(settings: Settings, cfg: prosody.ProsodyConfig) -> Settings:
    return dataclasses.replace(settings, xmpp_c2s_port=cfg.c2s_port, xmpp_component_port=cfg.component_port)


def remove_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
