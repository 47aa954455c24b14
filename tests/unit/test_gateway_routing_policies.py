"""Who may read, set and reset a copro's routing policy, over an in-memory store."""

from __future__ import annotations

import pytest

from koprogo_gateway.adapters.routing_policy_store import FakeRoutingPolicyStore
from koprogo_gateway.domain.access import ADMIN, OPEN_ACCESS, READ, WRITE, caller_from_claims
from koprogo_gateway.domain.errors import (
    CoproNotFoundError,
    ForbiddenError,
    InvalidCoproIdError,
    RoutingPolicyUnavailableError,
)
from koprogo_gateway.service_layer.routing_policies import CoproRoutingPolicies
from koprogo_shared.events import RoutingPreference

RESIDENT = caller_from_claims("u1", ["copro-a"], frozenset({READ, WRITE}))
ADMIN_CALLER = caller_from_claims("ops", [], frozenset({ADMIN}))
EDGE_ONLY = RoutingPreference(policy="edge_only", allow_fallback=False)


@pytest.fixture
def store() -> FakeRoutingPolicyStore:
    return FakeRoutingPolicyStore()


async def test_an_admin_sets_a_policy_its_residents_read_and_reset_brings_the_default_back(
    store: FakeRoutingPolicyStore,
) -> None:
    policies = CoproRoutingPolicies(store)
    default = await policies.read(RESIDENT, "copro-a")
    assert (default.policy, default.is_default) == (None, True)

    stored = await policies.set(ADMIN_CALLER, "copro-a", EDGE_ONLY)
    assert (stored.policy, stored.allow_fallback, stored.is_default) == ("edge_only", False, False)
    assert store.policies == {"copro-a": EDGE_ONLY}
    assert await policies.read(RESIDENT, "copro-a") == stored

    reset = await policies.reset(ADMIN_CALLER, "copro-a")
    assert reset.is_default and reset.policy is None
    assert store.policies == {}


async def test_a_resident_may_not_set_nor_reset_even_their_own_copro(store: FakeRoutingPolicyStore) -> None:
    policies = CoproRoutingPolicies(store)
    with pytest.raises(ForbiddenError):
        await policies.set(RESIDENT, "copro-a", EDGE_ONLY)
    with pytest.raises(ForbiddenError):
        await policies.reset(RESIDENT, "copro-a")
    assert store.policies == {}


async def test_another_copros_policy_does_not_exist_for_a_resident(store: FakeRoutingPolicyStore) -> None:
    policies = CoproRoutingPolicies(store)
    await policies.set(ADMIN_CALLER, "copro-b", EDGE_ONLY)
    with pytest.raises(CoproNotFoundError):
        await policies.read(RESIDENT, "copro-b")
    assert (await policies.read(ADMIN_CALLER, "copro-b")).policy == "edge_only"


async def test_an_id_that_cannot_be_a_key_is_a_validation_error(store: FakeRoutingPolicyStore) -> None:
    policies = CoproRoutingPolicies(store)
    for bad in ("a.b", "a*", "a b", "x" * 201):
        with pytest.raises(InvalidCoproIdError):
            await policies.set(OPEN_ACCESS, bad, EDGE_ONLY)
        with pytest.raises(InvalidCoproIdError):
            await policies.read(OPEN_ACCESS, bad)


async def test_an_unreachable_store_is_a_503_that_says_so(store: FakeRoutingPolicyStore) -> None:
    policies = CoproRoutingPolicies(store)
    store.unavailable = True
    for attempt in (
        policies.read(RESIDENT, "copro-a"),
        policies.set(ADMIN_CALLER, "copro-a", EDGE_ONLY),
        policies.reset(ADMIN_CALLER, "copro-a"),
    ):
        with pytest.raises(RoutingPolicyUnavailableError) as refused:
            await attempt
        assert refused.value.status == 503
        assert "routing-policy store" in refused.value.message
