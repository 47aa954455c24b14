"""Idempotency keys in a real JetStream key-value bucket: one creator per key, compare-and-set
outcomes, the bucket as the setup step declares it (24 h, history 1, file storage)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from nats.js import api as js_api

from koprogo_gateway.adapters.idempotency_store import (
    IdempotencyConflictError,
    IdempotencyStoreUnavailableError,
    NatsKvIdempotencyStore,
)
from koprogo_gateway.domain.idempotency import (
    IdempotencyEntry,
    StoredError,
    StoredOutcome,
    store_key,
    user_keys,
)
from koprogo_shared.events import utc_now
from koprogo_shared.kv_buckets import IDEMPOTENCY_BUCKET, bucket_stream, ensure_idempotency_bucket
from koprogo_shared.nats_connection import buckets_for_service, connect_nats
from tests.conftest import SecuredNats
from tests.integration.nats_permissions_support import connected_as, request_refused

pytestmark = pytest.mark.integration


def entry(request_id: str = "0d1e7a7e-6c0e-4a8e-9d7e-000000000001") -> IdempotencyEntry:
    now = utc_now()
    return IdempotencyEntry(
        request_id=request_id,
        fingerprint="f" * 64,
        created_at=now,
        deadline=now + timedelta(seconds=60),
        reply_subject="koprogo.reply.gw-1",
    )


async def test_one_creator_per_key_and_an_outcome_stored_once(clean_jetstream: str) -> None:
    nc, js = await connect_nats(clean_jetstream, "idem-store")
    try:
        await ensure_idempotency_bucket(js)
        await ensure_idempotency_bucket(js)  # declared again by another setup run: kept as is
        config = (await js.stream_info(bucket_stream(IDEMPOTENCY_BUCKET))).config
        short = nc.jetstream(timeout=1.0)
        store = NatsKvIdempotencyStore(await short.key_value(IDEMPOTENCY_BUCKET), short)
        # The bucket outlives a test (24 h): keys of this run only.
        k1, k2 = f"k1-{uuid.uuid4().hex}", f"k2-{uuid.uuid4().hex}"

        first = await store.create(k1, entry())
        with pytest.raises(IdempotencyConflictError):
            await store.create(k1, entry("0d1e7a7e-6c0e-4a8e-9d7e-000000000002"))
        outcome = StoredOutcome(error=StoredError(status=504, error="timeout", message="no answer"))
        settled = await store.replace(k1, first.entry.settled(outcome), first.revision)
        with pytest.raises(IdempotencyConflictError):
            await store.replace(k1, first.entry.settled(outcome), first.revision)  # a second settler

        assert await store.read(k1) == settled
        assert settled.entry.outcome == outcome
        assert await store.read(k2) is None
        await nc.close()
        with pytest.raises(IdempotencyStoreUnavailableError):
            await store.read(k1)
    finally:
        await nc.close()
    assert config.max_age == 24 * 3600
    assert config.max_msgs_per_subject == 1
    assert config.storage == js_api.StorageType.FILE


async def test_the_gateway_with_its_key_keeps_idempotency_keys_but_cannot_drop_the_bucket(
    secured: SecuredNats,
) -> None:
    # The setup step (admin) declared every bucket: the gateway waits for them, then only uses keys.
    async with connected_as(secured, "gateway") as gateway:
        await buckets_for_service(
            gateway.js, secured.seed_files["gateway"], rate_limit_window_s=60, timeout_s=5
        )
        store = NatsKvIdempotencyStore(await gateway.js.key_value(IDEMPOTENCY_BUCKET), gateway.js)
        key = f"k-{uuid.uuid4().hex}"
        first = await store.create(key, entry())
        outcome = StoredOutcome(error=StoredError(status=503, error="node_changed", message="moved"))
        await store.replace(key, first.entry.settled(outcome), first.revision)
        stored = await store.read(key)
        assert gateway.refusals.errors.empty()
        await request_refused(gateway.js.delete_key_value(IDEMPOTENCY_BUCKET))
        refusal = await gateway.refusals.next()
    assert stored is not None and stored.entry.outcome == outcome
    assert f"$JS.API.STREAM.DELETE.{bucket_stream(IDEMPOTENCY_BUCKET)}".lower() in refusal


async def test_the_gateway_forgets_every_entry_of_one_user_and_only_theirs(secured: SecuredNats) -> None:
    async with connected_as(secured, "gateway") as gateway:
        await buckets_for_service(
            gateway.js, secured.seed_files["gateway"], rate_limit_window_s=60, timeout_s=5
        )
        store = NatsKvIdempotencyStore(await gateway.js.key_value(IDEMPOTENCY_BUCKET), gateway.js)
        alice, bob = f"alice-{uuid.uuid4()}", f"bob-{uuid.uuid4()}"
        for user, header in ((alice, "k1"), (alice, "k2"), (bob, "k1")):
            created = await store.create(store_key(user, header), entry())
        forgotten = await store.forget(user_keys(alice))
        again = await store.forget(user_keys(alice))
        left = [await store.read(store_key(u, h)) for u, h in ((alice, "k1"), (alice, "k2"), (bob, "k1"))]
        recreated = await store.create(store_key(alice, "k1"), entry())  # a fresh request may use it again
        assert gateway.refusals.errors.empty()
    assert (forgotten, again) == (2, 0)
    assert left[0] is None and left[1] is None and left[2] == created
    assert recreated.revision > created.revision
