"""Throwaway corners of the shared servers, for tests and benchmarks.

A sandbox is a RabbitMQ vhost, a Redis key prefix and a MariaDB database that share
one random tag (a test run's vhosts come from a pool with tags of their own), and are
all removed afterwards. Several runs (other worktrees, CI, a
benchmark next to a test run) share this machine's servers at once: a name without a
random tag is someone else's name too, and removing it breaks their run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile
import threading
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


def _add_vhosts(*vhosts: str) -> None:
    """The vhosts and guest's permissions on them in one rabbitmqctl call (definitions are
    merged into the broker's): each call boots an Erlang VM, 1-3 s on a busy machine,
    and the test suite makes a sandbox per isolated gateway or stack test."""
    definitions = {
        "vhosts": [{"name": vhost} for vhost in vhosts],
        "permissions": [
            {"user": "guest", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"} for vhost in vhosts
        ],
    }
    # On stdin: Debian's rabbitmqctl runs as the rabbitmq user, who could not read our temp file.
    subprocess.run(
        ["rabbitmqctl", "-q", "import_definitions", "--format", "json"],
        input=json.dumps(definitions).encode(),
        check=True,
        capture_output=True,
        timeout=60,
    )


def _delete_vhosts(vhosts: list[str]) -> None:
    """Every vhost in one rabbitmqctl call (rabbit_vhost:delete/2, what delete_vhost
    calls); one delete_vhost each if the broker refuses the eval."""
    if not vhosts:
        return
    names = ", ".join(f"<<{json.dumps(vhost)}>>" for vhost in vhosts)
    script = f'[rabbit_vhost:delete(V, <<"habla-sandbox">>) || V <- [{names}]], ok.'
    done = subprocess.run(["rabbitmqctl", "-q", "eval", script], capture_output=True, timeout=120)
    if done.returncode != 0:
        for vhost in vhosts:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


class _VhostPool:
    """Vhosts made ``batch`` at a time and all deleted in one call at the end: a test run
    (tests/conftest.py) makes a dozen sandboxes, and two rabbitmqctl calls each (an Erlang
    VM boot apiece) cost it 15-50 s. Every sandbox still gets a vhost nobody used before."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.lock = threading.Lock()
        self.ready: list[str] = []
        self.made: list[str] = []

    def take(self) -> str:
        with self.lock:
            if not self.ready:
                run = uuid.uuid4().hex[:8]
                fresh = [f"habla-pool-{run}-{k}" for k in range(self.batch)]
                _add_vhosts(*fresh)
                self.made += fresh
                self.ready += fresh
            return self.ready.pop(0)

    def close(self) -> None:
        with self.lock:
            _delete_vhosts(self.made)
            self.made, self.ready = [], []


_pool: _VhostPool | None = None


def pool_vhosts(batch: int) -> None:
    """From now on this process's sandboxes take pre-made vhosts (see _VhostPool);
    ``unpool()`` deletes them all. For test runs; benchmarks keep one vhost each."""
    global _pool
    _pool = _VhostPool(batch)


def unpool() -> None:
    global _pool
    if _pool is not None:
        _pool.close()
    _pool = None


@dataclass(frozen=True)
class Sandbox:
    label: str
    tag: str
    settings: Settings
    own_database: bool
    vhost: str
    pooled: bool = False  # the vhost is the pool's to delete

    @property
    def database(self) -> str | None:
        return sa.make_url(self.settings.mysql_url).database if self.own_database else None


def create(
    label: str, *, base: Settings | None = None, own_database: bool = True, migrate: bool = True, **overrides: Any
) -> Sandbox:
    """A vhost, a Redis prefix and (own_database) a migrated database named after ``label``."""
    base = base or Settings.from_env()
    tag = uuid.uuid4().hex[:8]
    pool = _pool
    if pool is not None:
        vhost = pool.take()
    else:
        vhost = f"habla-{label}-{tag}"
        _add_vhosts(vhost)
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
    sandbox = Sandbox(label, tag, settings, own_database, vhost, pooled=pool is not None)
    if own_database and migrate:
        db.migrate(settings)
    return sandbox


def remove(sandbox: Sandbox) -> None:
    """Delete the vhost (a pooled one: with the pool), drop the database, delete every
    key under the prefix."""
    if not sandbox.pooled:
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
