"""`make run`'s dev stack (tools/devstack.py) starts every service healthy and stops cleanly.

Runs the real thing as a subprocess, isolated like every test run: its own MariaDB
database, Redis prefix, RabbitMQ vhost, state folder and free ports for everything
(Prosody included), then Ctrl-C (SIGINT) and checks nothing is left running.
"""

from __future__ import annotations

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
