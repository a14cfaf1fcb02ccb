"""`make run`'s dev stack (tools/devstack.py) starts every service healthy and stops cleanly.

Runs the real thing as a subprocess, isolated like every test run: its own MariaDB
database, Redis prefix, RabbitMQ vhost, state folder and free ports for everything
(Prosody included), then Ctrl-C (SIGINT) and checks nothing is left running.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from libs.common.settings import Settings
from tests.devstack.stack import START_WITHIN_S, Stack, healthz, running_stack, services
from tests.listening import listen_addresses


@pytest.mark.slow
@pytest.mark.timeout(START_WITHIN_S + 60)  # start, health checks, then up to 30 s to stop
def test_make_run_starts_every_service_healthy_and_ctrl_c_stops_everything(stack_settings: Settings) -> None:
    with running_stack(stack_settings) as stack:
        if "status_image" in services():
            site_id = stack.demo["HABLA_DEMO_SITE_ID"]
            url = f"{stack_settings.status_public_url}/status/{site_id}/image.png"
            with urllib.request.urlopen(url, timeout=5) as image:
                assert image.status == 200 and image.headers["Content-Type"] == "image/png"
        # Operators' clients are offered STARTTLS (many refuse plaintext logins).
        assert "urn:ietf:params:xml:ns:xmpp-tls" in _stream_features(stack_settings)
        # Health and metrics without authentication stay on loopback by default.
        for name in ("im_gateway", "transcript_worker"):
            port = stack_settings.gateway_metrics_port if name == "im_gateway" else stack_settings.worker_metrics_port
            assert listen_addresses(port) == {"127.0.0.1"}, name
        # The token-signing key is made for this checkout, readable only by its owner.
        key = Path(stack_settings.state_dir) / "secret_key"
        assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) >= 32
        _a_killed_service_is_reported_and_restarted(stack)


def _a_killed_service_is_reported_and_restarted(stack: Stack) -> None:
    def pid_of(name: str, verb: str) -> int | None:
        found = re.findall(rf"habla: {verb} {name} \(pid (\d+)\)", "".join(stack.output))
        return int(found[-1]) if found else None

    pid = pid_of("transcript_worker", "started")
    assert pid is not None, "".join(stack.output)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_of("transcript_worker", "restarted") is None:
        assert time.monotonic() < deadline, "".join(stack.output)
        time.sleep(0.2)
    assert "habla: transcript_worker exited with status -9; restarting in 1 s" in "".join(stack.output)
    while not _healthy(stack.settings.worker_metrics_port):
        assert time.monotonic() < deadline, "".join(stack.output)
        time.sleep(0.2)


def _healthy(port: int) -> bool:
    try:
        return healthz(port) == 200
    except OSError:
        return False


def _stream_features(settings: Settings) -> str:
    """What the XMPP server offers a client that opens a stream."""
    with socket.create_connection(("127.0.0.1", settings.xmpp_c2s_port), timeout=5) as sock:
        sock.sendall(
            f"<?xml version='1.0'?><stream:stream to='{settings.xmpp_domain}' version='1.0' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>".encode()
        )
        received = b""
        while b"</stream:features>" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received.decode(errors="replace")
