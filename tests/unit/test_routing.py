"""The routing decision, as a pure function."""

from __future__ import annotations

from koprogo_router.domain.routing import Refusal, Route, RoutingRequest, choose_target
from koprogo_shared.catalogue import BUNDLED_MODEL_ID, find_model, known_model_ids
from koprogo_shared.node_registry import EdgeCandidate


def node(node_id: str, models: tuple[str, ...] = (BUNDLED_MODEL_ID,), in_flight: int = 0) -> EdgeCandidate:
    return EdgeCandidate(node_id, models, in_flight, 1, 50.0, 7.0, 150.0, False, 0.0)


def decide(model: str, nodes: list[EdgeCandidate]) -> Route | Refusal:
    return choose_target(RoutingRequest(model), nodes, find_model, known_model_ids())


def test_unknown_model_is_refused_with_404_and_the_known_ids() -> None:
    decision = decide("llama9:1t", [node("a")])
    assert isinstance(decision, Refusal)
    assert decision.status == 404
    assert BUNDLED_MODEL_ID in decision.known_models
    assert "llama9:1t" in decision.message


def test_known_model_with_a_live_node_routes_to_the_edge() -> None:
    decision = decide(BUNDLED_MODEL_ID, [node("a")])
    assert isinstance(decision, Route)
    assert decision.targets[0].kind == "edge"
    assert decision.targets[0].node_ids == ("a",)


def test_least_loaded_node_comes_first() -> None:
    decision = decide(BUNDLED_MODEL_ID, [node("busy", in_flight=1), node("idle")])
    assert isinstance(decision, Route)
    assert decision.targets[0].node_ids == ("idle", "busy")
    assert "idle" in decision.reason


def test_edge_model_without_a_node_is_503_naming_what_is_missing() -> None:
    decision = decide("mistral:7b-instruct-q4", [node("a")])
    assert isinstance(decision, Refusal)
    assert decision.status == 503
    assert "no live edge node serves 'mistral:7b-instruct-q4'" in decision.message


def test_cloud_model_without_a_provider_is_503_naming_the_provider() -> None:
    decision = decide("claude-3-haiku", [])
    assert isinstance(decision, Refusal)
    assert decision.status == 503
    assert "anthropic" in decision.message


def test_consumer_names_of_distinct_model_ids_never_collide() -> None:
    from koprogo_shared.subjects import durable_name

    ids = ["a.b", "a_b", "a:b", "a-b", "a__b", "a_cb", "smollm2:135m-instruct-q4"]
    names = [durable_name("edge", model) for model in ids]
    assert len(set(names)) == len(ids)
    assert all(
        set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") for n in names
    )
