"""Rate-limit counters in a real JetStream key-value bucket: compare-and-set, contention, outages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.ports import free_port
from koprogo_gateway.adapters.rate_limit_store import (
    Counter,
    CounterConflictError,
    CounterStoreUnavailableError,
    NatsKvCounterStore,
)
from koprogo_gateway.domain.errors import RateLimitUnavailableError
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_shared.kv_buckets import ensure_rate_limit_bucket
from koprogo_shared.nats_connection import connect_nats
from koprogo_shared.subjects import RATE_LIMIT_BUCKET

pytestmark = pytest.mark.integration


async def counter_store(nats_url: str, name: str, timeout_s: float = 1.0) -> tuple[NATS, NatsKvCounterStore]:
    """A store as a gateway builds it: its own connection, the bucket ensured, a short timeout."""
    nc, js = await connect_nats(nats_url, name)
    await ensure_rate_limit_bucket(js, ttl_s=120)
    return nc, NatsKvCounterStore(await nc.jetstream(timeout=timeout_s).key_value(RATE_LIMIT_BUCKET))


async def test_a_write_from_a_stale_revision_is_refused_by_the_server(clean_jetstream: str) -> None:
    nc, store = await counter_store(clean_jetstream, "rl-cas")
    try:
        first = await store.create("copro.a.60s.1", 1)
        with pytest.raises(CounterConflictError):
            await store.create("copro.a.60s.1", 1)
        second = await store.replace("copro.a.60s.1", 2, first.revision)
        with pytest.raises(CounterConflictError):
            await store.replace("copro.a.60s.1", 2, first.revision)  # what a second gateway would try
        assert await store.read("copro.a.60s.1") == second
        assert await store.read("copro.b.60s.1") is None
    finally:
        await nc.close()


class CountingConflicts(NatsKvCounterStore):
    """Counts the compare-and-set conflicts. Each store's first write waits at `first_writes` until
    every gateway has read the counter and is about to write: the race the test is about then
    happens every run (left to the scheduler, all four sometimes wrote one after the other)."""

    conflicts = 0

    def __init__(self, kv: Any, first_writes: asyncio.Barrier) -> None:
        super().__init__(kv)
        self.first_writes: asyncio.Barrier | None = first_writes

    async def _met(self) -> None:
        if self.first_writes is not None:
            barrier, self.first_writes = self.first_writes, None
            await asyncio.wait_for(barrier.wait(), 10)

    async def create(self, key: str, count: int) -> Counter:
        await self._met()
        try:
            return await super().create(key, count)
        except CounterConflictError:
            CountingConflicts.conflicts += 1
            raise

    async def replace(self, key: str, count: int, revision: int) -> Counter:
        await self._met()
        try:
            return await super().replace(key, count, revision)
        except CounterConflictError:
            CountingConflicts.conflicts += 1
            raise


async def test_four_gateways_hammering_one_counter_admit_exactly_the_limit(clean_jetstream: str) -> None:
    policy = RateLimitPolicy("copro", 50, 3600)
    connections: list[NATS] = []
    limiters: list[RateLimiter] = []
    first_writes = asyncio.Barrier(4)
    CountingConflicts.conflicts = 0
    for i in range(4):
        nc, store = await counter_store(clean_jetstream, f"rl-gateway-{i}")
        connections.append(nc)
        limiters.append(RateLimiter(store=CountingConflicts(store.kv, first_writes), clock=time.time))
    try:
        decisions = await asyncio.gather(*(limiters[i % 4].admit([(policy, "hot")]) for i in range(200)))
        assert sum(d.admitted for d in decisions) == 50
        remaining = sorted(d.usages[0].remaining for d in decisions if d.admitted)
        assert remaining == list(range(50))  # every admitted request took a slot of its own
        assert CountingConflicts.conflicts > 0  # the gateways did race for the same revision
        kv = await connections[0].jetstream().key_value(RATE_LIMIT_BUCKET)
        (key,) = await kv.keys()
        assert (await kv.get(key)).value == b"50"
    finally:
        for nc in connections:
            await nc.close()


async def test_a_deleted_bucket_is_an_unavailable_store_and_the_limiter_refuses(clean_jetstream: str) -> None:
    nc, store = await counter_store(clean_jetstream, "rl-deleted")
    try:
        await nc.jetstream().delete_key_value(RATE_LIMIT_BUCKET)
        with pytest.raises(CounterStoreUnavailableError):
            await store.create("copro.a.60s.1", 1)
        with pytest.raises(RateLimitUnavailableError):
            await RateLimiter(store=store, clock=time.time).admit([(RateLimitPolicy("copro", 5, 60), "a")])
    finally:
        await nc.close()


async def test_a_stopped_nats_is_an_unavailable_store_within_its_timeout(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", port=free_port(), monitor_port=free_port()).start()
    nc, store = await counter_store(server.url, "rl-stopped", timeout_s=0.5)
    try:
        await store.create("copro.a.60s.1", 1)
        server.stop()
        started = time.monotonic()
        with pytest.raises(CounterStoreUnavailableError):
            await store.read("copro.a.60s.1")
        assert time.monotonic() - started < 3
    finally:
        server.stop()
        await nc.close()
