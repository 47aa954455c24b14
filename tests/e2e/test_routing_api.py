"""Copro routing policies over HTTP (stored in NATS, shared by every gateway replica), the admins'
node list, and a chat's own `routing` preference reaching the bus."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats

from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.events import ChatRequested, RoutingPreference
from koprogo_shared.subjects import CHAT_REQUESTED_ALL, ROUTING_POLICY_BUCKET
from tests.e2e.conftest import RunningStack, published_subjects
from tests.token_support import AUTH_SETTINGS, bearer, token

StackFactory = Callable[..., Awaitable[RunningStack]]

READ_WRITE = ("mcp:read", "mcp:write")


def new_copro() -> str:
    return str(uuid.uuid4())  # the bucket outlives a test: each test has copros of its own


def admin() -> dict[str, str]:
    return bearer(token(user=str(uuid.uuid4()), scopes=("mcp:admin",)))


def resident_of(copro_id: str) -> dict[str, str]:
    return bearer(token(user=str(uuid.uuid4()), copros=[copro_id], scopes=READ_WRITE))


def routing_path(copro_id: str) -> str:
    return f"/mcp/v1/copros/{copro_id}/routing"


async def test_an_admin_sets_a_copro_policy_every_replica_serves_and_only_its_residents_read(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(edge_nodes=0, gateways=2, **AUTH_SETTINGS)
    first, second = stack.clients
    copro_id, other_copro = new_copro(), new_copro()
    policy = {"policy": "lowest_carbon", "max_latency_ms": 5000, "allow_fallback": False}

    before = await second.get(routing_path(copro_id), headers=resident_of(copro_id))
    assert before.status_code == 200, before.text
    assert before.json() == {
        "copro_id": copro_id,
        "policy": None,
        "max_latency_ms": None,
        "allow_fallback": None,
        "is_default": True,
    }

    stored = await first.put(routing_path(copro_id), json=policy, headers=admin())
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"copro_id": copro_id, **policy, "is_default": False}

    # The other replica never saw the PUT: it reads the policy from NATS.
    read = await second.get(routing_path(copro_id), headers=resident_of(copro_id))
    assert read.status_code == 200, read.text
    assert read.json() == stored.json()

    outsider = await second.get(routing_path(copro_id), headers=resident_of(other_copro))
    assert outsider.status_code == 404, outsider.text
    assert outsider.json()["error"] == "not_found"
    assert "lowest_carbon" not in outsider.text

    refused = await first.put(
        routing_path(copro_id), json={"policy": "edge_only"}, headers=resident_of(copro_id)
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "forbidden"
    not_reset = await first.delete(routing_path(copro_id), headers=resident_of(copro_id))
    assert not_reset.status_code == 403, not_reset.text
    assert (await second.get(routing_path(copro_id), headers=admin())).json()["policy"] == "lowest_carbon"

    reset = await second.delete(routing_path(copro_id), headers=admin())
    assert reset.status_code == 200, reset.text
    assert reset.json()["is_default"] is True
    after = await first.get(routing_path(copro_id), headers=resident_of(copro_id))
    assert after.json() == before.json()


async def test_bad_policies_and_bad_copro_ids_are_422_and_store_nothing(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    copro_id = new_copro()
    for bad_body in (
        {"policy": "cheapest"},
        {"policy": "edge_only", "region": "eu-west"},
        {"max_latency_ms": "500"},
        {"max_latency_ms": -1},
        {"allow_fallback": "no"},
        ["edge_only"],
    ):
        response = await stack.client.put(routing_path(copro_id), json=bad_body, headers=admin())
        assert response.status_code == 422, (bad_body, response.text)
        assert response.json()["error"] == "validation_error"
    for bad_id in ("a.b", "copro*", "copro%20one", "x" * 201):
        response = await stack.client.put(routing_path(bad_id), json={"policy": "fastest"}, headers=admin())
        assert response.status_code == 422, (bad_id, response.text)
        assert "copro id" in response.json()["message"]
        assert (await stack.client.get(routing_path(bad_id), headers=admin())).status_code == 422
    unchanged = await stack.client.get(routing_path(copro_id), headers=admin())
    assert unchanged.json()["is_default"] is True
    anonymous = await stack.client.put(routing_path(copro_id), json={"policy": "fastest"})
    assert anonymous.status_code == 401, anonymous.text


async def test_admins_list_the_live_edge_node_and_residents_may_not(stack_factory: StackFactory) -> None:
    probe = token(scopes=("mcp:read",))
    stack = await stack_factory(edge_nodes=1, probe_token=probe, **AUTH_SETTINGS)
    listed = await stack.client.get("/mcp/v1/nodes", headers=admin())
    assert listed.status_code == 200, listed.text
    nodes = listed.json()
    (node,) = nodes["edge_nodes"]
    assert node["node_id"] == "edge-test-0"
    assert BUNDLED_MODEL_ID in node["models"]
    assert node["capacity"] >= 1 and node["in_flight"] >= 0
    assert set(node) == {
        "node_id",
        "models",
        "in_flight",
        "capacity",
        "tokens_per_second",
        "power_watts",
        "intensity_g_per_kwh",
        "renewable_attested",
    }
    assert nodes["cloud_deployments"] == []  # no inference-cloud runs in this stack

    copro_id = new_copro()
    refused = await stack.client.get("/mcp/v1/nodes", headers=resident_of(copro_id))
    assert refused.status_code == 403, refused.text
    assert (await stack.client.get("/mcp/v1/nodes")).status_code == 401

    models = {
        m["id"]: m for m in (await stack.client.get("/mcp/v1/models", headers=bearer(probe))).json()["models"]
    }
    assert models["auto"]["provider"] == "auto" and models["auto"]["is_available"] is True
    assert models["auto:small"]["context_length"] == 2048
    assert models["auto:large"]["is_available"] is False  # no node holds any of its models


async def test_a_chat_routing_preference_reaches_the_bus_and_an_unknown_policy_is_422(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(edge_nodes=1, chat_timeout_s=20, probe_token=token(), **AUTH_SETTINGS)
    copro_id = new_copro()
    chat: dict[str, Any] = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Bonjour, une phrase seulement."}],
        "context": f"copro:{copro_id}",
        "max_tokens": 8,
    }
    async with published_subjects(stack) as seen:
        refused = await stack.client.post(
            "/mcp/v1/chat", json={**chat, "routing": {"policy": "cheapest"}}, headers=resident_of(copro_id)
        )
        assert refused.status_code == 422, refused.text
        assert "routing.policy" in refused.text
    assert seen == []

    nc = await nats.connect(stack.nats_url)
    requested: asyncio.Queue[ChatRequested] = asyncio.Queue()

    async def record(msg: Any) -> None:
        await requested.put(ChatRequested.model_validate_json(msg.data))

    await nc.subscribe(CHAT_REQUESTED_ALL, cb=record)
    await nc.flush()
    try:
        accepted = await stack.client.post(
            "/mcp/v1/chat",
            json={**chat, "routing": {"policy": "edge_only", "max_latency_ms": 15000}},
            headers=resident_of(copro_id),
        )
        # Validation let it through; what the router makes of it is the router's business.
        assert accepted.status_code != 422, accepted.text
        published = await asyncio.wait_for(requested.get(), timeout=5)
    finally:
        await nc.close()
    assert published.model == "auto"
    assert published.copro_id == copro_id
    assert published.routing == RoutingPreference(policy="edge_only", max_latency_ms=15000)


async def test_a_policy_store_that_cannot_be_reached_is_a_clear_503(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    copro_id = new_copro()
    nc = await nats.connect(stack.nats_url)
    try:
        await nc.jetstream().delete_key_value(ROUTING_POLICY_BUCKET)  # under the running gateway
    finally:
        await nc.close()
    for method in ("PUT", "DELETE"):
        body = {"policy": "fastest"} if method == "PUT" else None
        response = await stack.client.request(method, routing_path(copro_id), json=body, headers=admin())
        assert response.status_code == 503, (method, response.text)
        assert response.json()["error"] == "routing_policy_unavailable"
        assert "routing-policy store" in response.json()["message"]
