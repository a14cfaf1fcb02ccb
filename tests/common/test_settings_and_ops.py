"""Settings, the README's settings table, docker-compose and the health/metrics convention."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import tornado.httpclient
import tornado.testing

from libs.common import observability
from libs.common.settings import Settings, SettingsError, env_names
from services.im_gateway import healthcheck
from services.im_gateway.gateway import Standby

ROOT = Path(__file__).resolve().parents[2]


def test_settings_come_from_the_environment_typed() -> None:
    settings = Settings.from_env({"HABLA_FRONTEND_PORT": "9000", "HABLA_LOG_JSON": "yes", "HABLA_REDIS_PREFIX": "x:"})
    assert (settings.frontend_port, settings.log_json, settings.redis_key("a", "b")) == (9000, True, "x:a:b")
    assert Settings.from_env({}).frontend_port == 8080


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HABLA_FRONTEND_PORT": "eighty"}, "HABLA_FRONTEND_PORT='eighty' is not a whole number"),
        ({"HABLA_LOG_JSON": "maybe"}, "HABLA_LOG_JSON='maybe' is not a boolean"),
    ],
)
def test_bad_settings_say_which_variable_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env(env)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in env_names() if f"`{name}`" not in readme]
    assert missing == [], f"README.md does not document {missing}"


def _compose(*args: str, secret: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HABLA_SECRET_KEY"}
    if secret is not None:
        env["HABLA_SECRET_KEY"] = secret
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="scripts/setup.sh installs docker-compose")
def test_docker_compose_file_is_valid() -> None:
    result = _compose("config", "-q", secret="x" * 40)
    assert result.returncode == 0, result.stderr
    services = _compose("config", "--services", secret="x" * 40).stdout.split()
    assert {
        "rpc_frontend",
        "status_image",
        "im_gateway",
        "transcript_worker",
        "rabbitmq1",
        "rabbitmq2",
        "rabbitmq3",
        "redis",
        "redis-replica",
        "sentinel1",
        "sentinel2",
        "sentinel3",
        "mariadb",
        "prosody",
    } <= set(services)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="scripts/setup.sh installs docker-compose")
def test_docker_compose_refuses_to_start_without_a_secret_key() -> None:
    # A default key would let anyone who read the source forge visitor tokens.
    result = _compose("config", "-q", secret=None)
    assert result.returncode != 0
    assert "HABLA_SECRET_KEY" in result.stderr


async def test_healthz_reports_each_dependency_and_metrics_are_prometheus_text() -> None:
    async def ok() -> None:
        return None

    async def down() -> None:
        raise ConnectionError("refused")

    port = tornado.testing.bind_unused_port()
    port[0].close()
    server = observability.serve("127.0.0.1", port[1], {"redis": ok})
    bad = tornado.testing.bind_unused_port()
    bad[0].close()
    bad_server = observability.serve("127.0.0.1", bad[1], {"redis": ok, "mysql": down})

    async def standing_by() -> None:
        raise Standby("standby: another gateway serves chat.localhost")

    waiting = tornado.testing.bind_unused_port()
    waiting[0].close()
    standby_server = observability.serve("127.0.0.1", waiting[1], {"redis": ok, "xmpp": standing_by})
    client = tornado.httpclient.AsyncHTTPClient()
    try:
        good = await client.fetch(f"http://127.0.0.1:{port[1]}/healthz")
        assert json.loads(good.body)["checks"] == {"redis": "ok"}
        failing = await client.fetch(f"http://127.0.0.1:{bad[1]}/healthz", raise_error=False)
        assert failing.code == 503
        assert json.loads(failing.body)["checks"]["mysql"] == "error: ConnectionError: refused"
        # A standing-by gateway is no error: its text alone, which docker's probe accepts.
        standby = await client.fetch(f"http://127.0.0.1:{waiting[1]}/healthz", raise_error=False)
        assert standby.code == 503
        assert json.loads(standby.body)["checks"]["xmpp"] == "standby: another gateway serves chat.localhost"
        with mock.patch.dict(os.environ, {"HABLA_GATEWAY_METRICS_PORT": str(waiting[1])}):
            assert await asyncio.to_thread(healthcheck.main) == 0
        metrics = await client.fetch(f"http://127.0.0.1:{port[1]}/metrics")
        assert b"# TYPE" in metrics.body and metrics.headers["Content-Type"].startswith("text/plain")
    finally:
        server.stop()
        bad_server.stop()
        standby_server.stop()
