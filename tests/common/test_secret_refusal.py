"""Outside development no service starts with a forgeable HABLA_SECRET_KEY (issue 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from libs.common.settings import DEFAULT_SECRET_KEY, EXIT_CONFIG, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["rpc_frontend", "status_image", "console", "im_gateway", "transcript_worker"]


def test_development_accepts_the_default_and_production_refuses_it() -> None:
    Settings.from_env({}).refuse_unsafe()  # development is the default
    for key in (DEFAULT_SECRET_KEY, "short", "x" * 31):
        with pytest.raises(SettingsError, match="HABLA_SECRET_KEY"):
            Settings.from_env({"HABLA_ENV": "production", "HABLA_SECRET_KEY": key}).refuse_unsafe()
    Settings.from_env({"HABLA_ENV": "production", "HABLA_SECRET_KEY": "k" * 32}).refuse_unsafe()


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("key", [None, "too-short"])
def test_every_service_refuses_to_start_in_one_line(service: str, key: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABLA_")}
    env["HABLA_ENV"] = "production"
    if key is not None:
        env["HABLA_SECRET_KEY"] = key
    result = subprocess.run(
        [sys.executable, "-m", f"services.{service}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == EXIT_CONFIG, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{service}: refusing to start:") and "HABLA_SECRET_KEY" in lines[0]
    assert "Traceback" not in result.stderr
