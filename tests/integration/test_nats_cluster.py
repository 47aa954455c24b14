"""NATS as a cluster (issue 12, finding 9): a server list in NATS_URL, and replicas that follow the
cluster (NATS_REPLICAS, else 3 on three servers or more, else 1), raised on streams declared before.
The leader killed under load: test_nats_faults.py."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.ports import free_port
from koprogo_shared import subjects
from koprogo_shared.events import ChatDelivered
from koprogo_shared.kv_buckets import BUCKETS, bucket_stream, declare_buckets
from koprogo_shared.nats_connection import JS_CLUSTER_NO_PEERS, connect_nats, declare_streams
from koprogo_shared.publishing import publish_event
from tests.integration.nats_cluster_support import (
    NatsCluster,
    wait_until_ready,
)

pytestmark = pytest.mark.integration

COPRO = "copro-fault"
STREAM_NAMES = [spec.name for spec in subjects.STREAMS] + [bucket_stream(bucket) for bucket in BUCKETS]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    running = NatsCluster(tmp_path / "cluster").start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def no_replicas_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_REPLICAS", raising=False)


async def replicas_of(js: JetStreamContext, names: list[str]) -> dict[str, int | None]:
    return {name: (await js.stream_info(name)).config.num_replicas for name in names}


async def test_a_comma_separated_server_list_connects(tmp_path: Path) -> None:
    # The conventional NATS_URL of a cluster; the first server listed is down.
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    try:
        nc, js = await asyncio.wait_for(
            connect_nats(f"nats://127.0.0.1:{free_port()}, {server.url}", "server-list"), 10
        )
        try:
            assert nc.is_connected
            assert (await js.account_info()).api is not None
        finally:
            await nc.close()
    finally:
        server.stop()


async def setup_step(environ: dict[str, str]) -> tuple[int, str]:
    """The deployments' stream setup step (a k8s Job, a compose one-shot service): its exit code and stderr."""
    setup = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "koprogo_shared.nats_connection",
        env={**os.environ, **environ}, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(setup.communicate(), 90)
    assert setup.returncode is not None
    return setup.returncode, err.decode()


async def test_the_setup_step_gives_every_stream_and_bucket_three_replicas_on_a_cluster(
    cluster: NatsCluster, no_replicas_setting: None
) -> None:
    # One server's address, as a Kubernetes service names the cluster; the step runs as soon as
    # the servers listen, while they are still meeting each other.
    returncode, err = await setup_step({"NATS_URL": cluster.nodes[0].url})
    assert returncode == 0, err
    assert "3 replica(s)" in err

    nc, js = await connect_nats(cluster.url, "replicas-check")
    try:
        assert await replicas_of(js, STREAM_NAMES) == dict.fromkeys(STREAM_NAMES, 3)
    finally:
        await nc.close()


async def test_the_setup_step_scales_single_replica_streams_and_buckets_up(
    cluster: NatsCluster, no_replicas_setting: None
) -> None:
    nc, js = await connect_nats(cluster.url, "old-setup")
    try:
        await wait_until_ready(js)
        # As every earlier version declared it: one replica.
        await js.add_stream(
            js_api.StreamConfig(
                name=subjects.EVENTS_STREAM,
                subjects=[subjects.EVENTS_ALL],
                storage=js_api.StorageType.FILE,
                num_replicas=1,
            )
        )
        kept = ChatDelivered(source="test", copro_id=COPRO, request_id="before", latency_ms=1.0)
        await publish_event(js, subjects.chat_delivered(COPRO), kept)
        await declare_buckets(js, rate_limit_window_s=60, replicas=1)

        await asyncio.wait_for(declare_streams(cluster.url), 60)

        assert await replicas_of(js, STREAM_NAMES) == dict.fromkeys(STREAM_NAMES, 3)
        assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 1
    finally:
        await nc.close()


async def test_an_explicit_replica_count_wins(cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_REPLICAS", "1")
    await asyncio.wait_for(declare_streams(cluster.url), 60)

    nc, js = await connect_nats(cluster.url, "replicas-check")
    try:
        assert await replicas_of(js, STREAM_NAMES) == dict.fromkeys(STREAM_NAMES, 1)
    finally:
        await nc.close()


async def test_a_replica_count_jetstream_cannot_keep_stops_the_setup_step_clearly() -> None:
    returncode, err = await setup_step({"NATS_URL": "nats://127.0.0.1:1", "NATS_REPLICAS": "7"})
    assert returncode == 1
    assert "NATS_REPLICAS must be a whole number from 1 to 5, not '7'" in err


async def test_a_single_server_gets_one_replica(tmp_path: Path, no_replicas_setting: None) -> None:
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    try:
        await asyncio.wait_for(declare_streams(server.url), 30)
        nc, js = await connect_nats(server.url, "replicas-check")
        try:
            assert await replicas_of(js, STREAM_NAMES) == dict.fromkeys(STREAM_NAMES, 1)
        finally:
            await nc.close()
    finally:
        server.stop()


async def test_replicas_a_single_server_cannot_keep_are_refused_at_once_with_the_servers_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not taken for a cluster still forming (which is asked again for a while): the server's own
    # reason, at once, rather than a timeout with the reason only in the warnings.
    monkeypatch.setenv("NATS_REPLICAS", "3")
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(APIError, match="non-clustered") as refused:
            await asyncio.wait_for(declare_streams(server.url), 20)
        assert refused.value.err_code != JS_CLUSTER_NO_PEERS
        assert asyncio.get_running_loop().time() - started < 10
    finally:
        server.stop()
