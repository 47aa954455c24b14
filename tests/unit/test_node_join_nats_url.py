"""`koprogo node join` tells another machine's node where NATS is, whatever NATS_URL the stack was given."""

from __future__ import annotations

import socket

from koprogo_cli.instance import StackRecord
from koprogo_cli.node_join import _nats_url_for_others


def test_a_stack_on_a_nats_cluster_gives_the_node_the_clusters_servers() -> None:
    # NATS_URL as a cluster's clients are given it (issue 12, finding 9): it crashed with a
    # ValueError ("Port could not be cast to integer value").
    servers = "nats://nats-0:4222,nats://nats-1:4222,nats://nats-2:4222"
    record = StackRecord(pid=1, nats_url=servers)

    assert _nats_url_for_others(record) == servers


def test_the_embedded_server_is_named_by_this_hosts_name() -> None:
    record = StackRecord(pid=1, nats_pid=2, nats_url="nats://127.0.0.1:4333")

    assert _nats_url_for_others(record) == f"nats://{socket.gethostname()}:4333"
