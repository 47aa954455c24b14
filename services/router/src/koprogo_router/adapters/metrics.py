"""The router's Prometheus series, served on its ops server's /metrics.

Decisions and fallbacks are counted as they are taken (`service_layer.dispatch`); the nodes'
health is read from the registries at scrape time (`NodeHealth`), so heartbeats cost nothing
more. Labels carry a target kind, a policy or an error code, and a node id: never a copro,
user or request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from koprogo_shared.node_registry import NodeRegistry

DECISIONS = Counter(
    "koprogo_router_decisions_total",
    "Chats routed, by first target (edge, cloud, grid; none when refused) and reason (the routing "
    "policy that chose, or the refusal's error code)",
    ["target", "reason"],
)
FALLBACKS = Counter(
    "koprogo_router_fallbacks_total",
    "Work handed to the plan's next target after an attempt failed, by the failed and the next target",
    ["from_target", "to_target"],
)

_decision_children: dict[tuple[str, str], Counter] = {}


def count_decision(target: str, reason: str) -> None:
    """Count one decision (children kept: no label lookup per chat)."""
    key = (target, reason)
    child = _decision_children.get(key)
    if child is None:
        child = _decision_children[key] = DECISIONS.labels(target, reason)
    child.inc()


def count_fallback(from_target: str, to_target: str) -> None:
    FALLBACKS.labels(from_target, to_target).inc()


class NodeHealth(Collector):
    """`koprogo_router_nodes{state}` and `koprogo_router_node_up{node}`, from the registries watched.

    A node is healthy (up 1) while its heartbeat is fresh, as the router routes to it, and stale
    (up 0) once it missed them: it stays listed until the router restarts or the node says it is
    leaving, so an alert on `node_up == 0` holds while the node is down.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._registries: list[NodeRegistry] = []

    def watch(self, registry: NodeRegistry) -> None:
        self._registries.append(registry)

    def forget(self, registry: NodeRegistry) -> None:
        if registry in self._registries:
            self._registries.remove(registry)

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        health: dict[str, bool] = {}
        for registry in self._registries:
            for node, fresh in registry.node_health(now).items():
                health[node] = health.get(node, False) or fresh
        healthy = sum(health.values())
        nodes = GaugeMetricFamily(
            "koprogo_router_nodes", "Edge nodes heard by the router, by heartbeat state", labels=["state"]
        )
        nodes.add_metric(["healthy"], healthy)
        nodes.add_metric(["stale"], len(health) - healthy)
        up = GaugeMetricFamily(
            "koprogo_router_node_up", "1 while the node's heartbeat is fresh, 0 once missed", labels=["node"]
        )
        for node in sorted(health):
            up.add_metric([node], 1.0 if health[node] else 0.0)
        yield nodes
        yield up


# One per process (the default registry is): each running router adds its node registry to it.
NODE_HEALTH = NodeHealth()
REGISTRY.register(NODE_HEALTH)
