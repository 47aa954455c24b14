"""Node liveness from heartbeats."""

from __future__ import annotations

from koprogo_shared import subjects
from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.events import NodeHeartbeat
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.node_roster import NodeGrant


def beat(node_id: str, models: list[str], interval_s: float = 2.0) -> NodeHeartbeat:
    return NodeHeartbeat(
        source="test",
        node_id=node_id,
        models=models,
        in_flight=0,
        capacity=1,
        tokens_per_second=10.0,
        power_watts=7.0,
        intensity_g_per_kwh=150.0,
        renewable_attested=False,
        interval_s=interval_s,
    )


def test_a_node_is_alive_until_three_heartbeats_are_missed() -> None:
    registry = NodeRegistry()
    registry.observe(beat("a", ["m1"]), now=100.0)
    assert [c.node_id for c in registry.alive(now=105.9)] == ["a"]
    assert registry.alive(now=106.1) == []


def test_available_models_are_the_union_of_live_nodes_models() -> None:
    registry = NodeRegistry()
    registry.observe(beat("a", ["m1"]), now=0.0)
    registry.observe(beat("b", ["m2", "m1"]), now=0.0)
    assert registry.available_models(now=1.0) == {"m1", "m2"}
    assert [c.node_id for c in registry.serving("m2", now=1.0)] == ["b"]


def heard_on_its_subject(registry: NodeRegistry, heartbeat: NodeHeartbeat, now: float = 0.0) -> str | None:
    return registry.heard(subjects.node_heartbeat(heartbeat.node_id), heartbeat, now)


def test_a_heartbeat_naming_another_node_than_its_subject_is_refused_leaving_included() -> None:
    registry = NodeRegistry()
    assert heard_on_its_subject(registry, beat("a", ["m1"])) is None
    forged_leave = beat("a", ["m1"]).model_copy(update={"leaving": True})
    assert registry.heard(subjects.node_heartbeat("b"), forged_leave, 1.0) == "node_id_not_its_subject"
    assert registry.heard(subjects.node_heartbeat("b"), beat("a", ["m2"]), 1.0) == "node_id_not_its_subject"
    assert [(c.node_id, c.models) for c in registry.alive(now=1.0)] == [("a", ("m1",))]
    assert heard_on_its_subject(registry, forged_leave) is None  # its own leaving is taken
    assert registry.alive(now=1.0) == []


def test_with_a_roster_a_node_announces_only_the_models_its_key_was_minted_for() -> None:
    roster = {"a": NodeGrant(frozenset({"m1", "m2"}))}
    registry = NodeRegistry(lambda: roster)
    assert heard_on_its_subject(registry, beat("a", ["m1", "m3"])) == "model_not_granted"
    assert heard_on_its_subject(registry, beat("stranger", ["m1"])) == "node_not_in_roster"
    assert registry.alive(now=1.0) == []
    assert heard_on_its_subject(registry, beat("a", ["m2"])) is None
    assert [c.node_id for c in registry.serving("m2", now=1.0)] == ["a"]


def test_with_a_roster_a_node_announces_only_the_pools_its_key_was_minted_for() -> None:
    roster = {"a": NodeGrant(frozenset({"m1"}), frozenset({subjects.copro_pool("c1")}))}
    registry = NodeRegistry(lambda: roster)
    shared = beat("a", ["m1"])  # a heartbeat says the shared pool unless told otherwise
    assert heard_on_its_subject(registry, shared) == "pool_not_granted"
    own = shared.model_copy(update={"pools": [subjects.copro_pool("c1")]})
    assert heard_on_its_subject(registry, own) is None
    assert [c.pools for c in registry.alive(now=1.0)] == [frozenset({subjects.copro_pool("c1")})]


def test_with_a_roster_a_node_claims_no_cleaner_energy_than_declared_but_may_claim_dirtier() -> None:
    roster = {
        "a": NodeGrant(frozenset({"m1"})),  # declared with the defaults: 7 W, 150 g/kWh
        "green": NodeGrant(frozenset({"m1"}), footprint=EdgeFootprint(5.0, 20.0, renewable_attested=True)),
    }
    registry = NodeRegistry(lambda: roster)
    honest = beat("a", ["m1"])
    for claim in ({"power_watts": 0.5}, {"intensity_g_per_kwh": 0.0}, {"renewable_attested": True}):
        assert heard_on_its_subject(registry, honest.model_copy(update=claim)) == "footprint_not_declared"
    assert registry.alive(now=1.0) == []
    assert heard_on_its_subject(registry, honest.model_copy(update={"intensity_g_per_kwh": 390.0})) is None
    attested = beat("green", ["m1"]).model_copy(
        update={"power_watts": 5.0, "intensity_g_per_kwh": 20.0, "renewable_attested": True}
    )
    assert heard_on_its_subject(registry, attested) is None
    assert {c.node_id: c.renewable_attested for c in registry.alive(now=1.0)} == {"a": False, "green": True}


def test_with_a_roster_a_node_announces_no_other_signing_key_than_the_rosters() -> None:
    roster = {
        "a": NodeGrant(frozenset({"m1"}), public_key="UKEYOFA"),
        "old": NodeGrant(frozenset({"m1"})),  # an entry written before keys were recorded
    }
    registry = NodeRegistry(lambda: roster)
    honest = beat("a", ["m1"]).model_copy(update={"public_key": "UKEYOFA"})
    assert heard_on_its_subject(registry, honest.model_copy(update={"public_key": "UOTHERKEY"})) == (
        "key_not_in_roster"
    )
    forged_leave = honest.model_copy(update={"public_key": "UOTHERKEY", "leaving": True})
    assert heard_on_its_subject(registry, forged_leave) == "key_not_in_roster"
    assert registry.alive(now=1.0) == []
    assert heard_on_its_subject(registry, honest) is None
    # A node that announces no key (chat only) is not refused for it; nor is one the roster has no key of.
    assert heard_on_its_subject(registry, beat("a", ["m1"])) is None
    assert (
        heard_on_its_subject(registry, beat("old", ["m1"]).model_copy(update={"public_key": "UANY"})) is None
    )
    assert sorted(c.node_id for c in registry.alive(now=1.0)) == ["a", "old"]
