"""``python -m services.im_gateway.healthcheck``: docker's liveness probe for a gateway.

/healthz is readiness: 503 on a standby ("standby: …"), which is alive and waiting to
take over. A container is healthy when its gateway is serving or standing by; exit
status 1 otherwise (docker restarts nothing by itself, but reports it).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from libs.common.settings import Settings


def main() -> int:
    settings = Settings.from_env()
    url = f"http://127.0.0.1:{settings.gateway_metrics_port}/healthz"
    try:
        urllib.request.urlopen(url, timeout=4)
    except urllib.error.HTTPError as exc:
        return 0 if b'"standby: ' in exc.read() else 1
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
