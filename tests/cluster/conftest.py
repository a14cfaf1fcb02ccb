"""Fixtures for the cluster tests: a local RabbitMQ cluster of 3 nodes (tools/rabbit_cluster.py)
and a Redis master + replica watched by 3 Sentinels (tools/sentinel.py), each started once per
module and torn down after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools import rabbit_cluster, sentinel


@pytest.fixture(scope="module")
def rabbit() -> Iterator[rabbit_cluster.Cluster]:
    cluster = rabbit_cluster.start(3)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def sentinels() -> Iterator[sentinel.SentinelSet]:
    group = sentinel.start(replicas=1, sentinels=3)
    try:
        yield group
    finally:
        group.close()
