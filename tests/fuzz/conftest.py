"""The fuzz suite's target: a real frontend process (``python -m services.rpc_frontend``)
against this run's isolated servers, with one site and one live visitor.

A separate process, so schemathesis (synchronous HTTP) and hypothesis drive it from the
test's own thread without sharing its event loop, and a crash shows as a dead process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from libs.common.db import site_store
from libs.common.settings import Settings
from tools.prosody import free_port

ROOT = Path(__file__).resolve().parents[2]
# Limits so high the fuzzers exercise the handlers rather than the 429 (limits have
# tests of their own); everything else is the default a deployment gets.
GENEROUS = 1_000_000


@dataclass(frozen=True)
class FuzzTarget:
    url: str
    site_id: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def server_errors_logged(self) -> list[str]:
        """Lines of the frontend's log about unhandled exceptions or 5xx answers."""
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if "Uncaught exception" in line or " 500 " in line]


def _post_json(url: str, body: object) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        data: dict[str, object] = json.loads(response.read())
    return data


@pytest.fixture(scope="session")
def fuzz_target(settings: Settings, engine: sa.Engine, artifacts: Path) -> Iterator[FuzzTarget]:
    with engine.begin() as conn:
        account = site_store.account_for_email(conn, "fuzz@shop.example")
        site = site_store.create_site(conn, account, "Fuzz shop", allowed_domains=["127.0.0.1"])
    port = free_port()
    instance = replace(
        settings,
        frontend_port=port,
        public_url=f"http://127.0.0.1:{port}",
        frontend_id=f"fuzz-{port}",
        ip_requests_per_min=GENEROUS,
        ip_unknown_sites_per_min=GENEROUS,
        visitor_messages_per_min=GENEROUS,
        visitor_pageviews_per_min=GENEROUS,
        log_level="INFO",
    )
    # Each xdist worker that runs a fuzz test starts a frontend of its own: one log each.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    log = artifacts / (f"fuzz-frontend-{worker}.log" if worker else "fuzz-frontend.log")
    env = instance.to_env()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.rpc_frontend"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5):
                break
        except OSError:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the frontend did not answer /healthz within 60 s"
            time.sleep(0.2)
    visitor = _post_json(f"{url}/api/sites/{site.id}/session", {"page": {"url": "http://127.0.0.1/fuzz"}})
    target = FuzzTarget(url, site.id, str(visitor["token"]), process, log)
    yield target
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
