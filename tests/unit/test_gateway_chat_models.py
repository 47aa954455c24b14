"""Which models a chat may ask for: each says which generation controls a live target serving it honours."""

from __future__ import annotations

import time

import pytest

from koprogo_gateway.domain.access import READ, WRITE, caller_from_claims
from koprogo_gateway.domain.errors import ForbiddenError
from koprogo_gateway.service_layer.models import list_models
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.events import CloudDeploymentStatus, NodeHeartbeat
from koprogo_shared.node_registry import NodeRegistry

READER = caller_from_claims("u1", ["copro-a"], frozenset({READ}))


def beat(node_id: str, models: list[str], features: list[str]) -> NodeHeartbeat:
    return NodeHeartbeat(
        source="test",
        node_id=node_id,
        models=models,
        in_flight=0,
        capacity=1,
        tokens_per_second=10.0,
        power_watts=5.0,
        intensity_g_per_kwh=100.0,
        renewable_attested=False,
        interval_s=60.0,
        features=features,
    )


def cloud(
    deployment: str, models: list[str], features: list[str], *, available: bool
) -> CloudDeploymentStatus:
    return CloudDeploymentStatus(
        source="test",
        deployment=deployment,
        provider="openai",
        models=models,
        available=available,
        wh_per_1k_tokens=0.3,
        intensity_g_per_kwh=300.0,
        interval_s=60.0,
        features=features,
    )


def test_each_model_lists_what_a_live_target_serving_it_honours() -> None:
    registry = NodeRegistry()
    now = time.monotonic()
    registry.observe(beat("pi-1", [BUNDLED_MODEL_ID], ["stop", "seed", "json_schema"]), now)
    registry.observe(beat("pi-2", [BUNDLED_MODEL_ID], ["tools", "stop"]), now)
    registry.observe(beat("pi-3", ["my-own-gguf"], ["seed"]), now)
    registry.observe_cloud(cloud("openai-eu", ["gpt-4o-mini"], ["json_object", "tools"], available=True), now)
    # A deployment without a key serves nothing, so it honours nothing either.
    registry.observe_cloud(cloud("openai-nokey", ["gpt-4o"], ["json_schema"], available=False), now)

    models = {m.id: m for m in list_models(registry, READER).models}

    assert models[BUNDLED_MODEL_ID].supports == ["json_schema", "seed", "stop", "tools"]
    assert models["gpt-4o-mini"].supports == ["json_object", "tools"]
    assert models["gpt-4o"].supports == []
    assert models["llama3:8b-instruct-q4"].supports == []  # nothing serves it
    assert models["my-own-gguf"].supports == ["seed"]
    # A class honours what any model it may pick honours: the router filters its targets.
    assert models["auto:small"].supports == ["json_object", "json_schema", "seed", "stop", "tools"]
    assert models["auto:large"].supports == []


def test_a_model_no_target_serves_any_more_supports_nothing() -> None:
    registry = NodeRegistry()
    registry.observe(beat("pi-1", [BUNDLED_MODEL_ID], ["stop"]), time.monotonic() - 3600)

    models = {m.id: m for m in list_models(registry, READER).models}

    assert (models[BUNDLED_MODEL_ID].is_available, models[BUNDLED_MODEL_ID].supports) == (False, [])


def test_listing_models_needs_the_read_scope() -> None:
    with pytest.raises(ForbiddenError):
        list_models(NodeRegistry(), caller_from_claims("u1", [], frozenset({WRITE})))
