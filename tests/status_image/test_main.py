"""`python -m services.status_image` starts, serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from libs.common.settings import Settings
from tools.prosody import free_port

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_the_service_runs_as_a_module_and_stops_on_sigterm(settings: Settings, make_site: Callable[[], str]) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HABLA_STATUS_PORT": str(port),
        "HABLA_REDIS_URL": settings.redis_url,
        "HABLA_REDIS_PREFIX": settings.redis_prefix,
        "HABLA_MYSQL_URL": settings.mysql_url,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.status_image"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                code, _, _ = _get(base + "/healthz")
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the service did not start listening"
                time.sleep(0.1)
        assert code == 200
        code, body, headers = _get(f"{base}/status/{make_site()}/image.png")
        assert (code, headers["Content-Type"]) == (200, "image/png") and body.startswith(b"\x89PNG")
        assert b"habla_status_requests_total" in _get(base + "/metrics")[1]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert "status image listening" in stderr and "stopping" in stderr
