"""Frontend metrics, including the proof that chat paths leave MySQL alone."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter, Gauge

MYSQL_STATEMENTS = Counter(
    "habla_frontend_mysql_statements_total",
    "SQL statements this frontend sent to MySQL (site-directory cache misses and /demo only)",
)


def count_statements(engine: sa.Engine) -> None:
    """Count every statement the engine executes (read by /metrics and the benchmark)."""

    def before(*_: Any) -> None:
        MYSQL_STATEMENTS.inc()

    sa.event.listen(engine, "before_cursor_execute", before)


LINES = Counter("habla_frontend_visitor_lines_total", "Visitor chat lines accepted", ["outcome"])
CONNECTIONS = Gauge("habla_frontend_connections", "Open WebSockets and parked long-polls on this instance")
