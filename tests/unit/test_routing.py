"""The routing decision and the policy merge, as pure functions."""

from __future__ import annotations

import dataclasses

import pytest

from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.co2 import CloudFootprint
from koprogo_shared.events import RoutingPolicyName, RoutingPreference
from koprogo_shared.node_registry import CloudCandidate, EdgeCandidate
from koprogo_shared.routing.choice import Refusal, Route, RoutingRequest, choose_target
from koprogo_shared.routing.decision import default_catalogue
from koprogo_shared.routing.policy import EffectivePolicy, PolicyViolation, edge_pools, effective_policy

PREFER_EDGE = EffectivePolicy("prefer_edge", None, True)


def node(
    node_id: str,
    models: tuple[str, ...] = (BUNDLED_MODEL_ID,),
    in_flight: int = 0,
    tokens_per_second: float = 50.0,
    intensity: float = 150.0,
    renewable: bool = False,
) -> EdgeCandidate:
    return EdgeCandidate(node_id, models, in_flight, 1, tokens_per_second, 7.0, intensity, renewable, 0.0)


def cloud(
    deployment: str = "openai",
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o"),
    available: bool = True,
    intensity: float = 300.0,
    latency_ms: float = 800.0,
    reason: str | None = None,
) -> CloudCandidate:
    return CloudCandidate(
        deployment, "openai", models, available, reason, CloudFootprint(1.0, intensity), latency_ms, "eu"
    )


def decide(
    model: str,
    nodes: list[EdgeCandidate],
    clouds: list[CloudCandidate] | None = None,
    policy: EffectivePolicy = PREFER_EDGE,
    max_tokens: int | None = None,
) -> Route | Refusal:
    return choose_target(RoutingRequest(model, policy, max_tokens), nodes, clouds or [], default_catalogue())


def policy(
    name: RoutingPolicyName, max_latency_ms: int | None = None, fallback: bool = True
) -> EffectivePolicy:
    return EffectivePolicy(name, max_latency_ms, fallback)


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


def test_edge_model_without_a_node_is_503_naming_what_is_missing() -> None:
    decision = decide("mistral:7b-instruct-q4", [node("a")])
    assert isinstance(decision, Refusal)
    assert decision.status == 503
    assert "no live edge node serves 'mistral:7b-instruct-q4'" in decision.message


def test_the_503_for_a_pullable_model_names_the_pull_and_the_serve_commands() -> None:
    decision = decide("llama3:8b", [node("a")])
    assert isinstance(decision, Refusal) and decision.status == 503
    assert "`.venv/bin/koprogo models pull llama3:8b`, then `.venv/bin/koprogo up --model llama3:8b`" in (
        decision.message
    )
    edge_only = decide("llama3:8b", [node("a")], policy=policy("edge_only"))
    assert isinstance(edge_only, Refusal) and "models pull llama3:8b" in edge_only.message


def test_a_model_outside_the_catalogue_is_known_while_a_node_serves_it() -> None:
    decision = decide("house-model", [node("a"), node("b", models=("house-model",))])
    assert isinstance(decision, Route) and decision.targets[0].node_ids == ("b",)
    assert isinstance(refused := decide("house-model", [node("a")]), Refusal) and refused.status == 404


def test_cloud_model_without_a_deployment_is_503_naming_the_provider_and_the_missing_key() -> None:
    keyless = cloud("anthropic", ("claude-3-haiku",), available=False, reason="ANTHROPIC_API_KEY is not set")
    decision = decide("claude-3-haiku", [], [keyless])
    assert isinstance(decision, Refusal)
    assert decision.status == 503
    assert "anthropic" in decision.message and "ANTHROPIC_API_KEY is not set" in decision.message


def test_a_cloud_model_runs_on_an_available_deployment_with_its_grams_estimated() -> None:
    decision = decide("gpt-4o-mini", [node("a")], [cloud()], max_tokens=1000)
    assert isinstance(decision, Route)
    [target] = decision.targets
    assert (target.kind, target.deployment, target.model) == ("cloud", "openai", "gpt-4o-mini")
    assert target.expected_grams == pytest.approx(0.3)  # 1 Wh/1000 tokens x 300 g/kWh


def test_auto_under_prefer_edge_runs_on_the_edge_with_the_cloud_as_fallback() -> None:
    decision = decide("auto", [node("pi")], [cloud()])
    assert isinstance(decision, Route)
    assert [(t.kind, t.model) for t in decision.targets] == [
        ("edge", BUNDLED_MODEL_ID),
        ("cloud", "gpt-4o-mini"),
    ]
    assert decision.reason.startswith("prefer_edge: ")


def test_auto_without_an_edge_node_falls_back_to_the_cloud() -> None:
    decision = decide("auto", [], [cloud()])
    assert isinstance(decision, Route)
    assert decision.targets[0].kind == "cloud"


def test_edge_only_never_chooses_the_cloud_and_says_so_when_no_node_is_left() -> None:
    decision = decide("auto", [], [cloud()], policy("edge_only"))
    assert isinstance(decision, Refusal)
    assert decision.status == 503 and "edge_only" in decision.message
    routed = decide("auto", [node("pi")], [cloud()], policy("edge_only"))
    assert isinstance(routed, Route) and {t.kind for t in routed.targets} == {"edge"}


def test_lowest_carbon_prefers_a_clean_cloud_over_a_slow_node_on_a_dirty_grid() -> None:
    slow_dirty = node("coal-pi", tokens_per_second=1.0, intensity=900.0)
    green_cloud = cloud(intensity=20.0)
    decision = decide("auto", [slow_dirty], [green_cloud], policy("lowest_carbon"), max_tokens=500)
    assert isinstance(decision, Route)
    assert decision.targets[0].kind == "cloud"
    # ... while prefer_edge keeps the edge first whatever it emits.
    edge_first = decide("auto", [slow_dirty], [green_cloud], PREFER_EDGE, max_tokens=500)
    assert isinstance(edge_first, Route) and edge_first.targets[0].kind == "edge"


def test_a_renewable_node_is_the_lowest_carbon_target() -> None:
    decision = decide(
        "auto", [node("solar-pi", renewable=True)], [cloud(intensity=20.0)], policy("lowest_carbon")
    )
    assert isinstance(decision, Route)
    assert decision.targets[0].kind == "edge" and decision.targets[0].expected_grams == 0.0


def test_fastest_orders_by_expected_latency() -> None:
    decision = decide(
        "auto", [node("pi", tokens_per_second=5.0)], [cloud(latency_ms=700.0)], policy("fastest")
    )
    assert isinstance(decision, Route)
    assert decision.targets[0].kind == "cloud"  # 256 tokens at 5 tok/s is ~51 s


def test_max_latency_drops_slow_targets_and_refuses_when_none_is_fast_enough() -> None:
    decision = decide("auto", [node("pi", tokens_per_second=5.0)], [cloud()], policy("prefer_edge", 2000))
    assert isinstance(decision, Route)
    assert [t.kind for t in decision.targets] == ["cloud"]
    refused = decide("auto", [node("pi", tokens_per_second=5.0)], [], policy("prefer_edge", 2000))
    assert isinstance(refused, Refusal) and "max_latency_ms=2000" in refused.message


def test_without_fallback_only_the_first_target_is_kept() -> None:
    decision = decide("auto", [node("pi")], [cloud()], policy("prefer_edge", fallback=False))
    assert isinstance(decision, Route) and len(decision.targets) == 1


def test_a_deployment_in_cooldown_is_skipped() -> None:
    decision = decide("gpt-4o-mini", [], [cloud("a", available=False, reason="cooling down"), cloud("b")])
    assert isinstance(decision, Route)
    assert [t.deployment for t in decision.targets] == ["b"]


def test_a_request_may_tighten_its_copros_policy_but_not_loosen_edge_only() -> None:
    edge_only = RoutingPreference(policy="edge_only")
    # The copro's own edge_only also keeps its work on its own nodes (`edge_pools`).
    assert effective_policy(edge_only, None) == EffectivePolicy("edge_only", None, True, own_nodes_only=True)
    loosened = effective_policy(edge_only, RoutingPreference(policy="lowest_carbon"))
    assert isinstance(loosened, PolicyViolation) and "edge_only" in loosened.message
    tightened = effective_policy(
        RoutingPreference(policy="prefer_edge"), RoutingPreference(policy="edge_only")
    )
    assert tightened == EffectivePolicy("edge_only", None, True)


def test_latency_and_fallback_take_the_stricter_of_copro_and_request() -> None:
    copro = RoutingPreference(max_latency_ms=5000, allow_fallback=False)
    merged = effective_policy(copro, RoutingPreference(max_latency_ms=9000, allow_fallback=True))
    assert merged == EffectivePolicy("prefer_edge", 5000, False)
    assert effective_policy(None, RoutingPreference(max_latency_ms=100)) == EffectivePolicy(
        "prefer_edge", 100, True
    )
    assert effective_policy(None, None, default="lowest_carbon") == EffectivePolicy(
        "lowest_carbon", None, True
    )


def test_consumer_names_of_distinct_model_ids_never_collide() -> None:
    from koprogo_shared.subjects import durable_name

    ids = ["a.b", "a_b", "a:b", "a-b", "a__b", "a_cb", "smollm2:135m-instruct-q4"]
    names = [durable_name("edge", model) for model in ids]
    assert len(set(names)) == len(ids)
    assert all(
        set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") for n in names
    )


def test_a_request_goes_only_to_targets_that_honour_its_controls() -> None:
    from dataclasses import replace

    edge = replace(node("a", models=("gpt-4o-mini",)), features=frozenset({"stop", "seed", "json_schema"}))
    api = replace(cloud(), features=frozenset({"stop", "tools"}))
    needs_schema = RoutingRequest("gpt-4o-mini", PREFER_EDGE, None, frozenset({"json_schema"}))
    decision = choose_target(needs_schema, [edge], [api], default_catalogue())
    assert isinstance(decision, Route)
    assert [t.kind for t in decision.targets] == [
        "edge"
    ]  # the cloud would ignore the schema: no fallback there

    needs_tools = RoutingRequest("gpt-4o-mini", PREFER_EDGE, None, frozenset({"tools"}))
    decision = choose_target(needs_tools, [edge], [api], default_catalogue())
    assert isinstance(decision, Route)
    assert [t.kind for t in decision.targets] == ["cloud"]

    # Nothing honours both: a 400 naming what each target lacks, not a silent drop.
    both = RoutingRequest("gpt-4o-mini", PREFER_EDGE, None, frozenset({"tools", "json_schema"}))
    refusal = choose_target(both, [edge], [api], default_catalogue())
    assert isinstance(refusal, Refusal)
    assert (refusal.status, refusal.error) == (400, "unsupported_parameter")
    assert "edge gpt-4o-mini lacks tools" in refusal.message
    assert "cloud openai lacks json_schema" in refusal.message


def test_an_edge_pool_keeps_the_nodes_that_honour_the_request() -> None:
    from dataclasses import replace

    new = replace(node("new"), features=frozenset({"stop"}))
    old = node("old")  # an older node announces no features
    decision = choose_target(
        RoutingRequest(BUNDLED_MODEL_ID, PREFER_EDGE, None, frozenset({"stop"})),
        [new, old],
        [],
        default_catalogue(),
    )
    assert isinstance(decision, Route)
    assert decision.targets[0].node_ids == ("new",)
    plain = decide(BUNDLED_MODEL_ID, [new, old])
    assert isinstance(plain, Route) and set(plain.targets[0].node_ids) == {"new", "old"}


OWN = subjects.copro_pool("c1")


def in_pool(candidate: EdgeCandidate, *pools: str) -> EdgeCandidate:
    return dataclasses.replace(candidate, pools=frozenset(pools))


def decide_for_copro(nodes: list[EdgeCandidate], policy_: EffectivePolicy) -> Route | Refusal:
    request = RoutingRequest(BUNDLED_MODEL_ID, policy_, pools=edge_pools("c1", policy_))
    return choose_target(request, nodes, [cloud()], default_catalogue())


def test_a_copros_work_goes_to_its_own_nodes_first_then_to_the_shared_pool() -> None:
    own = in_pool(node("own", tokens_per_second=5.0), OWN)
    shared = node("shared", tokens_per_second=80.0)
    other_copro = in_pool(node("theirs", tokens_per_second=200.0), subjects.copro_pool("c2"))
    decision = decide_for_copro([own, shared, other_copro], PREFER_EDGE)
    assert isinstance(decision, Route)
    edge = [(t.pool, t.node_ids) for t in decision.targets if t.kind == "edge"]
    assert edge == [(OWN, ("own",)), (subjects.SHARED_POOL, ("shared",))]


def test_an_edge_only_copros_work_goes_to_its_own_nodes_alone() -> None:
    edge_only = effective_policy(RoutingPreference(policy="edge_only"), None)
    assert isinstance(edge_only, EffectivePolicy) and edge_only.own_nodes_only
    shared = node("shared")
    refused = decide_for_copro([shared], edge_only)
    assert isinstance(refused, Refusal) and refused.status == 503
    assert "own edge nodes" in refused.message and "--copro" in refused.message
    decision = decide_for_copro([shared, in_pool(node("own"), OWN, subjects.copro_pool("c2"))], edge_only)
    assert isinstance(decision, Route)
    assert [(t.kind, t.pool, t.node_ids) for t in decision.targets] == [("edge", OWN, ("own",))]


def test_a_request_asking_edge_only_of_a_copro_that_allows_the_shared_pool_may_use_it() -> None:
    asked = effective_policy(RoutingPreference(policy="prefer_edge"), RoutingPreference(policy="edge_only"))
    assert isinstance(asked, EffectivePolicy) and not asked.own_nodes_only
    assert edge_pools("c1", asked) == (OWN, subjects.SHARED_POOL)
    assert edge_pools(None, asked) == (subjects.SHARED_POOL,)
