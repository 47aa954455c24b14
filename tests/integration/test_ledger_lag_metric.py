"""The ledger's lag gauge on a real NATS server: its consumer's pending plus delivered-unacknowledged
messages, read off the projection's path; nothing said before the consumer exists."""

from __future__ import annotations

import asyncio
import logging
import uuid

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from koprogo_ledger.entrypoints.stream_watch import watch_consumer_lag
from koprogo_shared.consumer import ConsumerSpec
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def _lag() -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("koprogo_ledger_lag_messages")


async def test_the_lag_counts_pending_and_unacknowledged_messages_and_follows_acks(
    clean_jetstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"LAG_{uuid.uuid4().hex[:8].upper()}"
    spec = ConsumerSpec(stream=name, durable="ledger-lag-test", filter_subject=f"{name.lower()}.>")
    nc = await nats.connect(clean_jetstream)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[spec.filter_subject])
    for i in range(5):
        await js.publish(f"{name.lower()}.event", f"{i}".encode())
    stop = asyncio.Event()
    watching = asyncio.create_task(watch_consumer_lag(js, spec, stop, interval_s=0.05))
    try:
        with caplog.at_level(logging.WARNING):
            await asyncio.sleep(0.2)  # no consumer yet: the lag is unknown, and that is no warning
        assert "lag could not be read" not in caplog.text
        config = ConsumerConfig(
            durable_name=spec.durable, filter_subject=spec.filter_subject, ack_policy=AckPolicy.EXPLICIT
        )
        await js.add_consumer(name, config)
        await wait_until(lambda: _is(5.0), timeout=5)
        sub = await js.pull_subscribe_bind(spec.durable, stream=name)
        held = await sub.fetch(2, timeout=2)
        await wait_until(lambda: _is(5.0), timeout=5)  # 3 pending + 2 delivered, not acknowledged
        for msg in held:
            await msg.ack_sync()
        await wait_until(lambda: _is(3.0), timeout=5)
    finally:
        stop.set()
        await watching
        await js.delete_stream(name)
        await nc.close()


async def _is(expected: float) -> bool:
    return _lag() == expected
