"""Copro routing policies in a real JetStream key-value bucket: round trip, shared between gateways, outages."""

from __future__ import annotations

import uuid

import pytest
from nats.aio.client import Client as NATS

from koprogo_gateway.adapters.routing_policy_store import (
    NatsKvRoutingPolicyStore,
    RoutingPolicyStoreUnavailableError,
)
from koprogo_shared.events import RoutingPreference
from koprogo_shared.nats_connection import connect_nats
from koprogo_shared.routing_policies import ensure_routing_policy_bucket
from koprogo_shared.subjects import ROUTING_POLICY_BUCKET

pytestmark = pytest.mark.integration


async def policy_store(nats_url: str, name: str) -> tuple[NATS, NatsKvRoutingPolicyStore]:
    """A store as a gateway builds it: its own connection, the bucket ensured, a short timeout."""
    nc, js = await connect_nats(nats_url, name)
    await ensure_routing_policy_bucket(js)
    return nc, NatsKvRoutingPolicyStore(await nc.jetstream(timeout=1.0).key_value(ROUTING_POLICY_BUCKET))


def copro() -> str:
    return f"copro-{uuid.uuid4().hex[:12]}"


async def test_a_policy_is_stored_read_back_by_another_gateway_and_reset(clean_jetstream: str) -> None:
    nc_a, gateway_a = await policy_store(clean_jetstream, "rp-a")
    nc_b, gateway_b = await policy_store(clean_jetstream, "rp-b")  # the bucket exists: kept as it is
    copro_id = copro()
    policy = RoutingPreference(policy="lowest_carbon", max_latency_ms=4000, allow_fallback=False)
    try:
        assert await gateway_b.get(copro_id) is None
        assert await gateway_a.put(copro_id, policy) == policy
        assert await gateway_b.get(copro_id) == policy
        entry = await gateway_b.kv.get(copro_id)
        assert RoutingPreference.model_validate_json(entry.value or b"") == policy  # JSON the router reads

        replaced = RoutingPreference(policy="edge_only")
        await gateway_b.put(copro_id, replaced)
        assert await gateway_a.get(copro_id) == replaced

        await gateway_a.delete(copro_id)
        assert await gateway_b.get(copro_id) is None
        await gateway_a.delete(copro_id)  # resetting twice is fine
        assert await gateway_a.get(copro()) is None
    finally:
        await nc_a.close()
        await nc_b.close()


async def test_an_id_that_cannot_be_a_key_is_refused_before_any_io(clean_jetstream: str) -> None:
    nc, store = await policy_store(clean_jetstream, "rp-bad-id")
    try:
        for bad in ("a.b", "a*", "a b", "", ">"):
            with pytest.raises(ValueError):
                await store.get(bad)
            with pytest.raises(ValueError):
                await store.put(bad, RoutingPreference(policy="fastest"))
    finally:
        await nc.close()


async def test_a_closed_connection_is_an_unavailable_store(clean_jetstream: str) -> None:
    nc, store = await policy_store(clean_jetstream, "rp-closed")
    copro_id = copro()
    await store.put(copro_id, RoutingPreference(policy="prefer_edge"))
    await nc.close()
    with pytest.raises(RoutingPolicyStoreUnavailableError, match="reading the routing policy failed"):
        await store.get(copro_id)
    with pytest.raises(RoutingPolicyStoreUnavailableError, match="storing the routing policy failed"):
        await store.put(copro_id, RoutingPreference(policy="fastest"))
    with pytest.raises(RoutingPolicyStoreUnavailableError, match="resetting the routing policy failed"):
        await store.delete(copro_id)


async def test_a_value_that_is_no_policy_is_an_unavailable_store_not_a_crash(clean_jetstream: str) -> None:
    nc, store = await policy_store(clean_jetstream, "rp-garbage")
    copro_id = copro()
    try:
        await store.kv.put(copro_id, b'{"policy": "cheapest"}')
        with pytest.raises(RoutingPolicyStoreUnavailableError, match="not a valid policy"):
            await store.get(copro_id)
    finally:
        await nc.close()
