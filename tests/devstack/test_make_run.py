"""`make run`'s dev stack (tools/devstack.py) starts every service healthy and stops cleanly.

Runs the real thing as a subprocess, isolated like every test run: its own MariaDB
database, Redis prefix, RabbitMQ vhost, state folder and free ports for everything
(Prosody included), then Ctrl-C (SIGINT) and checks nothing is left running.
"""

from __future__ import annotations

import socket
import urllib.request

import pytest

from libs.common.settings import Settings
from tests.devstack.stack import START_WITHIN_S, running_stack, services


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
