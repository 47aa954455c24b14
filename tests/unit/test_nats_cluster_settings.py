"""How the NATS helper reads a cluster's settings: NATS_URL's server list, NATS_REPLICAS, the server's INFO."""

from __future__ import annotations

import pytest

from koprogo_shared.nats_connection import cluster_replicas, nats_servers, replicas_setting


def test_a_comma_separated_nats_url_is_a_list_of_servers() -> None:
    assert nats_servers("nats://a:4222,nats://b:4222, nats://c:4222 ,") == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]
    assert nats_servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]


@pytest.mark.parametrize("url", ["", " , ", ","])
def test_a_nats_url_naming_no_server_is_refused_clearly(url: str) -> None:
    with pytest.raises(ValueError, match="NATS_URL names no server"):
        nats_servers(url)


def test_replicas_follow_the_setting_when_given() -> None:
    assert replicas_setting({}) is None
    assert replicas_setting({"NATS_REPLICAS": ""}) is None
    assert replicas_setting({"NATS_REPLICAS": "3"}) == 3
    assert replicas_setting({"NATS_REPLICAS": " 1 "}) == 1


@pytest.mark.parametrize("value", ["0", "6", "three", "-1", "2.5"])
def test_a_replica_count_jetstream_cannot_keep_is_refused_clearly(value: str) -> None:
    with pytest.raises(ValueError, match="NATS_REPLICAS must be a whole number from 1 to 5"):
        replicas_setting({"NATS_REPLICAS": value})


def urls(count: int) -> list[str]:
    return [f"10.0.0.{i}:4222" for i in range(count)]


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({}, 1),  # a single server announces no cluster
        ({"cluster": "c", "connect_urls": urls(1)}, 1),
        ({"cluster": "c", "connect_urls": urls(2)}, 1),  # two cannot outvote a lost one
        ({"cluster": "c", "connect_urls": urls(3)}, 3),
        ({"cluster": "c", "connect_urls": urls(5)}, 3),
        ({"connect_urls": urls(3)}, 1),  # no cluster name: not clustered
    ],
)
def test_without_a_setting_replicas_follow_the_cluster(info: dict[str, object], expected: int) -> None:
    assert cluster_replicas(info) == expected


def test_servers_the_cluster_announced_after_the_connection_count_too() -> None:
    # The client connected while the third server was still meeting the others.
    assert cluster_replicas({"cluster": "c", "connect_urls": urls(2)}, known_servers=3) == 3
    assert cluster_replicas({"connect_urls": urls(2)}, known_servers=3) == 1  # three URLs, no cluster
