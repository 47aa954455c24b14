"""NATS dying under load (issue 12): no acknowledged event lost, none stored twice, clients back by themselves.

* A three-node cluster with the streams at three replicas: the node leading KOPROGO_EVENTS, which
  is also the one the publisher is connected to, is killed (SIGKILL) in the middle of a stream
  of publishes, then started again.
* A single server killed and started again in the middle of a stream of publishes.

The publisher does what every KoproGo publisher does (`publish_event`: retries with the same
`Nats-Msg-Id`), and, like a client retrying with its idempotency key, publishes an event again
with the same id until it is acknowledged. The stream must then hold each id exactly once.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.ports import free_port
from koprogo_shared import subjects
from koprogo_shared.events import ChatDelivered
from koprogo_shared.nats_connection import connect_nats, declare_streams, ensure_streams
from koprogo_shared.publishing import publish_event
from tests.integration.nats_cluster_support import (
    NatsCluster,
    move_stream_leader,
    server_name,
    wait_until_replicas_current,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(110)]

COPRO = "copro-fault"
EVENTS = 300
# How long one event may take to be acknowledged, retries included, while a node dies.
ACK_DEADLINE_S = 30.0
OUTAGE_S = 1.0


@dataclass
class Publisher:
    """Publishes EVENTS events in order, each until acknowledged; counts the attempts that failed."""

    js: JetStreamContext
    prefix: str
    acked: list[str] = field(default_factory=list)
    failed_attempts: int = 0
    # The longest one event took to be acknowledged: a restart felt, not slept through.
    slowest_s: float = 0.0

    def event(self, i: int) -> ChatDelivered:
        return ChatDelivered(
            id=f"{self.prefix}-{i:04d}", source="test", copro_id=COPRO, request_id=f"r-{i}", latency_ms=1.0
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(EVENTS):
            event = self.event(i)
            started = loop.time()
            deadline = started + ACK_DEADLINE_S
            while True:
                try:
                    await publish_event(self.js, subjects.chat_delivered(COPRO), event)
                    break
                except (TimeoutError, nats.errors.Error):
                    self.failed_attempts += 1
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            self.acked.append(event.id)
            self.slowest_s = max(self.slowest_s, loop.time() - started)
            await asyncio.sleep(0.005)  # a steady stream, not a burst: the kill lands in the middle

    async def until_acked(self, count: int, task: asyncio.Task[None]) -> None:
        while len(self.acked) < count:
            if task.done():
                task.result()
                raise AssertionError(f"the publisher stopped after {len(self.acked)} events")
            await asyncio.sleep(0.01)


async def stored_ids(js: JetStreamContext, stream: str) -> collections.Counter[str]:
    """Every Nats-Msg-Id the stream holds, with how many times it holds it."""
    info = await js.stream_info(stream)
    ids: collections.Counter[str] = collections.Counter()
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        ids[(msg.headers or {}).get("Nats-Msg-Id", "")] += 1
    return ids


def assert_each_stored_once(stored: collections.Counter[str], acked: list[str]) -> None:
    assert len(acked) == EVENTS == len(set(acked))
    missing = [event_id for event_id in acked if stored[event_id] == 0]
    twice = {event_id: n for event_id, n in stored.items() if n > 1}
    assert missing == [], f"acknowledged but not stored: {missing[:10]}"
    assert twice == {}, f"stored more than once: {twice}"
    assert set(stored) == set(acked)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsCluster]:
    monkeypatch.delenv("NATS_REPLICAS", raising=False)
    running = NatsCluster(tmp_path / "cluster").start()
    try:
        yield running
    finally:
        running.stop()


async def test_killing_the_stream_leader_under_load_loses_and_duplicates_nothing(
    cluster: NatsCluster,
) -> None:
    await asyncio.wait_for(declare_streams(cluster.url), 60)
    nc, js = await connect_nats(cluster.url, "fault-publisher")
    try:
        await wait_until_replicas_current(js, subjects.EVENTS_STREAM, 3)
        victim = server_name(nc)
        # The node the publisher talks to leads the stream: killing it loses both at once.
        await move_stream_leader(nc, js, subjects.EVENTS_STREAM, victim)

        publisher = Publisher(js, "cluster")
        publishing = asyncio.create_task(publisher.run())
        await publisher.until_acked(EVENTS // 3, publishing)
        cluster.kill(victim)
        await publisher.until_acked(2 * EVENTS // 3, publishing)
        cluster.restart(victim)
        await asyncio.wait_for(publishing, 90)

        assert nc.stats["reconnects"] >= 1  # back by itself, to another server of the list
        assert nc.is_connected
        assert publisher.slowest_s >= OUTAGE_S  # the kill was felt: an event waited for a new leader
        # publish_event itself rides out the election: a service's publish does not fail meanwhile.
        assert publisher.failed_attempts == 0
        await wait_until_replicas_current(js, subjects.EVENTS_STREAM, 3)
        assert_each_stored_once(await stored_ids(js, subjects.EVENTS_STREAM), publisher.acked)

        # The killed node caught up: led by it, the stream still holds each event once.
        await move_stream_leader(nc, js, subjects.EVENTS_STREAM, victim)
        assert_each_stored_once(await stored_ids(js, subjects.EVENTS_STREAM), publisher.acked)
    finally:
        await nc.close()


async def test_a_single_server_restarted_under_load_stores_each_retried_event_once(tmp_path: Path) -> None:
    port = free_port()
    server = EmbeddedNats(tmp_path / "nats", port=port).start()
    nc: NATS | None = None
    try:
        nc, js = await connect_nats(server.url, "restart-publisher")
        await ensure_streams(js)
        publisher = Publisher(js, "single")
        publishing = asyncio.create_task(publisher.run())
        await publisher.until_acked(EVENTS // 3, publishing)
        assert server.proc is not None
        server.proc.kill()  # SIGKILL: acknowledged writes are on disk (sync_interval: always)
        server.proc.wait()
        await asyncio.sleep(OUTAGE_S)  # the publish in flight is retried with its id meanwhile
        server = EmbeddedNats(tmp_path / "nats", port=port).start()
        await asyncio.wait_for(publishing, 90)

        assert nc.stats["reconnects"] >= 1
        assert publisher.slowest_s >= OUTAGE_S  # one publish was retried across the restart
        assert_each_stored_once(await stored_ids(js, subjects.EVENTS_STREAM), publisher.acked)
    finally:
        if nc is not None:
            await nc.close()
        server.stop()
