"""The counters' bucket is written `async` (no fsync on the chat's path), and nothing else is.

On a real nats-server (the embedded one, `sync_interval: always`, as `koprogo up` runs it):
the setup step declares the counters' bucket with `persist_mode: async` and every event and work
stream with the default (fsynced); a bucket declared before this change is declared again with
every count it held, counts written by a gateway during the move included; a graceful restart
keeps every count; a SIGKILL keeps the bucket (it takes writes at once) and every acknowledged
event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import nats.js.errors
import pytest
from nats.js import api as js_api

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.ports import free_port
from koprogo_gateway.adapters.rate_limit_store import CounterStoreUnavailableError, NatsKvCounterStore
from koprogo_gateway.domain.errors import RateLimitUnavailableError
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_shared import subjects
from koprogo_shared.kv_buckets import (
    bucket_stream,
    declare_buckets,
    ensure_rate_limit_bucket,
    rate_limit_ttl_s,
)
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from koprogo_shared.subjects import RATE_LIMIT_BUCKET

pytestmark = pytest.mark.integration

COUNTERS = bucket_stream(RATE_LIMIT_BUCKET)


def persist_mode(config: js_api.StreamConfig) -> str:
    return str(js_api.PersistMode(config.persist_mode or js_api.PersistMode.DEFAULT).value)


async def declare_as_before(js: nats.js.JetStreamContext, ttl_s: float) -> None:
    """The counters' bucket as the setup step declared it before: fsynced like every stream."""
    await js.create_key_value(
        js_api.KeyValueConfig(bucket=RATE_LIMIT_BUCKET, history=1, ttl=ttl_s, storage=js_api.StorageType.FILE)
    )


async def test_the_setup_step_writes_the_counters_async_and_every_stream_fsynced(
    clean_jetstream: str,
) -> None:
    nc, js = await connect_nats(clean_jetstream, "setup")
    try:
        await ensure_streams(js, replicas=1)
        await declare_buckets(js, rate_limit_window_s=60, replicas=1)
        counters = (await js.stream_info(COUNTERS)).config
        assert persist_mode(counters) == "async"
        assert counters.storage == js_api.StorageType.FILE
        assert counters.max_age == rate_limit_ttl_s(60)
        assert counters.max_msgs_per_subject == 1
        # The facts, the work and every other bucket keep the fsync of `sync_interval: always`.
        others = [spec.name for spec in subjects.STREAMS] + [
            bucket_stream(b) for b in (subjects.ROUTING_POLICY_BUCKET, subjects.GRID_TASKS_BUCKET)
        ]
        for name in others:
            assert persist_mode((await js.stream_info(name)).config) == "default", name
        # Declared again (every service start, every setup step): kept as it is, counts included.
        store = NatsKvCounterStore(await js.key_value(RATE_LIMIT_BUCKET))
        await store.create("copro.a.60s.1", 3)
        await declare_buckets(js, rate_limit_window_s=60, replicas=1)
        assert (await store.read("copro.a.60s.1")) is not None
        assert (await store.read("copro.a.60s.1")).count == 3  # type: ignore[union-attr]
    finally:
        await nc.close()


async def test_a_bucket_declared_before_is_moved_with_every_count_and_a_gateways_writes_meanwhile(
    clean_jetstream: str,
) -> None:
    nc, js = await connect_nats(clean_jetstream, "setup")
    gateway, _ = await connect_nats(clean_jetstream, "gateway")
    try:
        await declare_as_before(js, ttl_s=300)
        old = NatsKvCounterStore(await js.key_value(RATE_LIMIT_BUCKET))
        for key, count in {"copro.a.60s.7": 41, "user.u.60s.7": 9, "copro.b.60s.6": 2}.items():
            counter = await old.create(key, 1)
            await old.replace(key, count, counter.revision)
        policy = RateLimitPolicy("copro", 50, 60)
        now = [7 * 60 + 1.0]  # in window 7 of 60 s
        limiter = RateLimiter(
            store=NatsKvCounterStore(await gateway.jetstream(timeout=0.5).key_value(RATE_LIMIT_BUCKET)),
            clock=lambda: now[0],
        )
        # A gateway admits requests for copro a while the setup step moves the bucket: each is
        # counted (before the seal, or in the new bucket) or refused as unavailable, never lost.
        outcomes: list[str] = []

        async def gateway_requests(n: int) -> None:
            for _ in range(n):
                try:
                    outcomes.append("admitted" if (await limiter.admit([(policy, "a")])).admitted else "full")
                except RateLimitUnavailableError:
                    outcomes.append("unavailable")  # the seal, or the moment without a bucket
                await asyncio.sleep(0.002)

        requests = asyncio.create_task(gateway_requests(30))
        await asyncio.sleep(0.01)
        await ensure_rate_limit_bucket(js, ttl_s=120)  # a shorter TTL is never taken: 300 kept
        await requests
        now[0] += 1.5  # past the limiter's pause after a failure, still in window 7
        await gateway_requests(15)

        info = await js.stream_info(COUNTERS)
        assert persist_mode(info.config) == "async"
        assert not info.config.sealed
        assert info.config.max_age == 300
        new = NatsKvCounterStore(await js.key_value(RATE_LIMIT_BUCKET))
        assert (await new.read("user.u.60s.7")).count == 9  # type: ignore[union-attr]
        assert (await new.read("copro.b.60s.6")).count == 2  # type: ignore[union-attr]
        # Exact across the move: 41 before it, and the window's last 9 slots, no more.
        assert outcomes.count("admitted") == 9
        assert outcomes[-1] == "full"
        assert (await new.read("copro.a.60s.7")).count == 50  # type: ignore[union-attr]
    finally:
        await gateway.close()
        await nc.close()


async def test_a_sealed_bucket_left_by_an_interrupted_move_is_taken_up(clean_jetstream: str) -> None:
    nc, js = await connect_nats(clean_jetstream, "setup")
    try:
        await declare_as_before(js, ttl_s=120)
        old = NatsKvCounterStore(await js.key_value(RATE_LIMIT_BUCKET))
        await old.create("copro.a.60s.1", 4)
        info = await js.stream_info(COUNTERS)
        info.config.sealed = True  # a setup step died right after sealing it
        await js.update_stream(info.config)
        with pytest.raises(CounterStoreUnavailableError):
            await old.create("copro.b.60s.1", 1)
        await ensure_rate_limit_bucket(js, ttl_s=120)
        new = NatsKvCounterStore(await js.key_value(RATE_LIMIT_BUCKET))
        assert (await new.read("copro.a.60s.1")).count == 4  # type: ignore[union-attr]
        await new.create("copro.b.60s.1", 1)  # writable again
    finally:
        await nc.close()


async def test_counts_survive_a_graceful_restart_and_a_sigkill_keeps_the_bucket_and_every_event(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats", port=free_port(), monitor_port=free_port()).start()
    try:
        nc, js = await connect_nats(server.url, "setup")
        await ensure_streams(js, replicas=1)
        await declare_buckets(js, rate_limit_window_s=60, replicas=1)
        limiter = RateLimiter(
            store=NatsKvCounterStore(await js.key_value(RATE_LIMIT_BUCKET)), clock=lambda: 60.0 * 5
        )
        policy = RateLimitPolicy("copro", 5, 60)
        assert [(await limiter.admit([(policy, "a")])).admitted for _ in range(3)] == [True] * 3
        await nc.close()

        server.stop()  # SIGTERM: nats-server flushes every stream on its way out
        server.start()
        nc, js = await connect_nats(server.url, "gateway")
        assert persist_mode((await js.stream_info(COUNTERS)).config) == "async"
        limiter = RateLimiter(
            store=NatsKvCounterStore(await js.key_value(RATE_LIMIT_BUCKET)), clock=lambda: 60.0 * 5
        )
        # 3 counted before the restart: 2 more, then full.
        assert [(await limiter.admit([(policy, "a")])).admitted for _ in range(3)] == [True, True, False]

        # Acknowledged events are fsynced as before: every one is there after a SIGKILL.
        for i in range(20):
            await js.publish(subjects.chat_requested("c"), f"event {i}".encode(), timeout=5)
        await nc.close()
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait(10)
        server.start()
        nc, js = await connect_nats(server.url, "gateway")
        events = await js.stream_info(subjects.EVENTS_STREAM)
        assert events.state.messages == 20
        # The counters' bucket is still declared (only its last writes may be lost) and takes writes.
        store = NatsKvCounterStore(await nc.jetstream(timeout=2).key_value(RATE_LIMIT_BUCKET))
        started = time.monotonic()
        await store.create("copro.z.60s.1", 1)
        assert time.monotonic() - started < 2
        await nc.close()
    finally:
        server.stop()


async def test_two_setup_steps_moving_the_bucket_at_once_keep_each_count_once(clean_jetstream: str) -> None:
    # Anonymous gateways on a development server declare the bucket as they start, together.
    connections = [await connect_nats(clean_jetstream, f"setup-{i}") for i in range(3)]
    try:
        js = connections[0][1]
        await declare_as_before(js, ttl_s=120)
        old = NatsKvCounterStore(await js.key_value(RATE_LIMIT_BUCKET))
        counts = {f"copro.c{i}.60s.1": i + 1 for i in range(20)}
        for key, count in counts.items():
            await old.create(key, count)
        await asyncio.gather(*(ensure_rate_limit_bucket(c_js, ttl_s=120) for _, c_js in connections))
        info = await js.stream_info(COUNTERS)
        assert persist_mode(info.config) == "async" and not info.config.sealed
        new = NatsKvCounterStore(await js.key_value(RATE_LIMIT_BUCKET))
        assert {key: (await new.read(key)).count for key in counts} == counts  # type: ignore[union-attr]
    finally:
        for nc, _ in connections:
            await nc.close()


class DeletesWhenReleased:
    """A setup step's JetStream whose stream deletion waits until the test releases it: the step
    has checked that the stream is the sealed one, and is slow to delete it (review of 2026-12-02)."""

    def __init__(self, js: nats.js.JetStreamContext) -> None:
        self._js = js
        self.deleting = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._js, name)

    async def delete_stream(self, name: str) -> bool:
        self.deleting.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), timeout=10)
        return bool(await self._js.delete_stream(name))


async def test_a_step_slow_to_delete_never_deletes_the_bucket_another_step_declared_again(
    clean_jetstream: str,
) -> None:
    (nc_a, js_a), (nc_b, js_b) = [await connect_nats(clean_jetstream, f"setup-{n}") for n in "ab"]
    try:
        await declare_as_before(js_a, ttl_s=120)
        old = NatsKvCounterStore(await js_a.key_value(RATE_LIMIT_BUCKET))
        counts = {f"copro.c{i}.60s.1": i + 1 for i in range(5)}
        for key, count in counts.items():
            await old.create(key, count)
        slow = DeletesWhenReleased(js_b)
        step_b = asyncio.create_task(ensure_rate_limit_bucket(slow, ttl_s=120))  # type: ignore[arg-type]
        await asyncio.wait_for(slow.deleting.wait(), timeout=10)  # b saw the sealed stream, and deletes
        step_a = asyncio.create_task(ensure_rate_limit_bucket(js_a, ttl_s=120))
        await asyncio.wait({step_a}, timeout=2)
        # A gateway's write once a step has declared the bucket again (none while a move holds it).
        gateway = NatsKvCounterStore(await js_a.key_value(RATE_LIMIT_BUCKET))
        wrote_during_move = False
        with contextlib.suppress(CounterStoreUnavailableError, nats.js.errors.NotFoundError):
            await gateway.create("copro.late.60s.1", 1)
            wrote_during_move = True
        slow.release.set()
        await asyncio.gather(step_a, step_b)
        if not wrote_during_move:
            await NatsKvCounterStore(await js_a.key_value(RATE_LIMIT_BUCKET)).create("copro.late.60s.1", 1)
        info = await js_a.stream_info(COUNTERS)
        assert persist_mode(info.config) == "async" and not info.config.sealed
        new = NatsKvCounterStore(await js_a.key_value(RATE_LIMIT_BUCKET))
        kept = {key: getattr(await new.read(key), "count", None) for key in [*counts, "copro.late.60s.1"]}
        assert kept == counts | {"copro.late.60s.1": 1}, "each count once, the gateway's write kept"
    finally:
        await nc_a.close()
        await nc_b.close()
