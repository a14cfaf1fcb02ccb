"""Settings for clusters: broker node lists and Sentinel addresses (no servers needed)."""

from __future__ import annotations

import pytest

from libs.common.settings import Settings, SettingsError


def test_one_broker_url_or_a_comma_separated_list() -> None:
    assert Settings.from_env({}).amqp_urls == ["amqp://guest:guest@127.0.0.1:5672/"]
    nodes = "amqp://u:p%2Cq@r1:5672/habla, amqp://u:p%2Cq@r2:5672/habla,,amqps://u:p%2Cq@r3:5671/habla"
    assert Settings.from_env({"HABLA_AMQP_URL": nodes}).amqp_urls == [
        "amqp://u:p%2Cq@r1:5672/habla",
        "amqp://u:p%2Cq@r2:5672/habla",
        "amqps://u:p%2Cq@r3:5671/habla",
    ]


@pytest.mark.parametrize("value", ["", " , ", "http://r1/", "amqp://r1/,redis://r2"])
def test_a_broker_list_without_amqp_urls_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="HABLA_AMQP_URL"):
        _ = Settings.from_env({"HABLA_AMQP_URL": value}).amqp_urls


def test_sentinel_addresses() -> None:
    assert Settings.from_env({}).redis_sentinel_list == []
    value = "s1:26379, 10.0.0.2:26380,[::1]:26381"
    assert Settings.from_env({"HABLA_REDIS_SENTINELS": value}).redis_sentinel_list == [
        ("s1", 26379),
        ("10.0.0.2", 26380),
        ("::1", 26381),
    ]


@pytest.mark.parametrize("value", ["s1", "s1:", ":26379", "s1:0", "s1:65536", "s1:2637x", "s1:٣"])
def test_a_bad_sentinel_address_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="HABLA_REDIS_SENTINELS"):
        _ = Settings.from_env({"HABLA_REDIS_SENTINELS": value}).redis_sentinel_list
