"""Partition assignment (libs.common.partitions): stable, spread, P = 1 unchanged."""

from __future__ import annotations

import dataclasses
import zlib

import pytest

from libs.common import partitions
from libs.common.settings import Settings, SettingsError


def _settings(p: int, serve: str = "all") -> Settings:
    return dataclasses.replace(
        Settings(), xmpp_component_domain="chat.example.org", gateway_partitions=p, gateway_serve_partitions=serve
    )


def test_one_partition_is_the_unpartitioned_layout() -> None:
    s = _settings(1)
    assert partitions.all_domains(s) == ["chat.example.org"]
    assert partitions.site_domain(s, "abc", None) == "chat.example.org"
    assert partitions.site_domain(s, "abc", "chat-b.example.org") == "chat-b.example.org"


def test_sites_spread_stably_over_partition_domains() -> None:
    s = _settings(4)
    assert partitions.all_domains(s) == [f"p{n}.chat.example.org" for n in range(4)]
    ids = [f"site{n:04d}" for n in range(400)]
    counts = [0] * 4
    for site_id in ids:
        n = partitions.partition_of(site_id, 4)
        assert n == zlib.crc32(site_id.encode()) % 4  # the same everywhere, every run
        assert partitions.site_domain(s, site_id, None) == f"p{n}.chat.example.org"
        counts[n] += 1
    assert all(c > 50 for c in counts), counts
    # Worst values: lone surrogates, control characters, a huge id: a partition, no error.
    for odd in ["\ud800", "\x00\x1b", "x" * 100_000]:
        assert 0 <= partitions.partition_of(odd, 4) < 4
    assert partitions.default_partition(s, "p3.chat.example.org") == 3
    assert partitions.default_partition(s, "chat-b.example.org") is None


def test_served_partitions_and_bounds() -> None:
    assert partitions.served(_settings(4)) == [0, 1, 2, 3]
    assert partitions.served(_settings(4, " 3, 1,1 ")) == [1, 3]
    for bad in ["4", "-1", "x", "1e3", "٣", "9" * 1000]:
        with pytest.raises(SettingsError):
            partitions.served(_settings(4, bad))
    for p in (0, -1, partitions.MAX_PARTITIONS + 1, 10**18):
        with pytest.raises(SettingsError):
            partitions.count(_settings(p))
