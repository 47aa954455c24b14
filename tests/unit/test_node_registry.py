"""Node liveness from heartbeats."""

from __future__ import annotations

from koprogo_shared.events import NodeHeartbeat
from koprogo_shared.node_registry import NodeRegistry


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
