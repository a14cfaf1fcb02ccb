"""bench/bench_e2e.py with tiny numbers: it runs to the end and prints every figure.

No time is asserted (benchmarks measure, tests check behaviour): this only keeps the
benchmark from rotting as the services change under it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Every figure the issue asks for, by the words that start its line.
FIGURES = [
    "lines/s visitor -> operator, saturated",
    "lines/s operator -> visitor, saturated",
    "frontend accepted lines/s",
    "bare confirmed publishes",
    "bare component -> client",
    "bare client -> component",
    "latency paced at 20 lines/s each way",
    "visitor -> operator p50",
    "operator -> visitor p50",
    "bare component p50",
    "widget boots/s",
    "returning page views/s",
    "bare Tornado",
    "CPU per widget boot: rpc_frontend",
    "CPU seconds per 1 M units, per process",
    "rpc_frontend alone:",
    "suite total",
    "Redis commands per unit of work",
    "widget boot ",
    "operator -> visitor line",
]
PROCESSES = ["rpc_frontend", "im_gateway", "transcript_worker", "prosody", "rabbitmq", "redis", "mariadb"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_e2e_prints_every_figure() -> None:
    tiny = ["--visitors", "3", "--lines", "2", "--rates", "20", "--paced-seconds", "0.5"]
    tiny += ["--http-seconds", "1", "--connections", "2", "--tokens", "3", "--operators", "2"]
    run = subprocess.run(
        [sys.executable, "bench/bench_e2e.py", *tiny], cwd=ROOT, capture_output=True, text=True, timeout=540
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    missing = [figure for figure in FIGURES if figure not in out]
    assert not missing, f"not printed: {missing}\n{out}"
    table = out[out.index("CPU seconds per 1 M units") :]
    assert all(name in table for name in PROCESSES), table
    # nginx is a baseline when installed, and otherwise says it was skipped.
    assert "nginx" in out
