"""What a routing decision works with: the request, the places it may run, the decision. Pure.

A target is an edge pool, the grid (both: live edge nodes sharing one durable consumer) or a
cloud deployment. `node_target` gives a set of nodes one estimate for the request's expected
size, the same way for an edge pool and for the grid, so they compare on equal terms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from koprogo_shared import co2, subjects
from koprogo_shared.catalogue import CatalogueModel
from koprogo_shared.node_registry import EdgeCandidate
from koprogo_shared.routing.policy import EffectivePolicy

# What ranking assumes when the request sets no max_tokens (an answer of a few paragraphs).
DEFAULT_EXPECTED_TOKENS = 256
# A node that has not measured its speed yet (no answer since it started): a Pi-class guess.
UNMEASURED_TOKENS_PER_SECOND = 5.0
# A deployment without recent calls: a typical hosted-model answer of a few hundred tokens.
UNMEASURED_CLOUD_LATENCY_MS = 2000.0


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    model: str
    policy: EffectivePolicy
    max_tokens: int | None = None
    # The generation controls the request sets (`events.required_features`).
    features: frozenset[str] = frozenset()
    # The edge pools whose nodes may take this work, the preferred first (`policy.edge_pools`).
    pools: tuple[str, ...] = (subjects.SHARED_POOL,)
    # The characters of its messages: a size, to tell a long chat (the grid's) from an
    # interactive one; never used as a token count.
    prompt_chars: int = 0

    @property
    def expected_tokens(self) -> int:
        return self.max_tokens or DEFAULT_EXPECTED_TOKENS


TargetKind = Literal["edge", "cloud", "grid"]


@dataclass(frozen=True, slots=True)
class Target:
    kind: TargetKind
    model: str
    # For the edge and the grid, the nodes that may take the work (they pull it from one
    # shared durable consumer, so the least busy node takes it first); for the edge, its pool.
    node_ids: tuple[str, ...] = ()
    pool: str | None = None
    # For the cloud, the deployment that serves `model`.
    deployment: str | None = None
    expected_grams: float = 0.0
    expected_latency_ms: float = 0.0
    # The generation controls every node of the pool (or the deployment) honours.
    features: frozenset[str] = frozenset()

    def describe(self) -> str:
        if self.kind == "edge":
            where = f"edge pool {self.pool} [{', '.join(self.node_ids)}]"
        elif self.kind == "grid":
            where = f"grid [{', '.join(self.node_ids)}]"
        else:
            where = f"cloud {self.deployment}"
        return f"{self.model} on {where} (~{self.expected_grams:.4f} g, ~{self.expected_latency_ms:.0f} ms)"


@dataclass(frozen=True, slots=True)
class Route:
    targets: tuple[Target, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    error: str
    message: str
    known_models: tuple[str, ...] = ()


RoutingDecision = Route | Refusal


@dataclass(frozen=True, slots=True)
class Catalogue:
    """What the router knows of models: the catalogue and the auto classes."""

    find_model: Callable[[str], CatalogueModel | None]
    known_models: Sequence[str]
    auto_class: Callable[[str], tuple[str, ...] | None]


def node_target(
    kind: Literal["edge", "grid"],
    model: str,
    request: RoutingRequest,
    nodes: Sequence[EdgeCandidate],
    pool: str | None = None,
) -> Target | None:
    """`nodes` (live, serving `model`) as one target, estimated on its least busy node; None if empty."""
    serving = sorted(nodes, key=lambda c: (c.load, -c.tokens_per_second, c.node_id))
    if request.features:
        # The nodes share one consumer: any of them may take the work, so keep those that
        # honour the request (another set of nodes would need its own subject).
        serving = [c for c in serving if request.features <= c.features] or serving
    if not serving:
        return None
    best = serving[0]
    speed = best.tokens_per_second or UNMEASURED_TOKENS_PER_SECOND
    # The work waits for what the node already has in hand, then runs.
    seconds = request.expected_tokens / speed * (1 + best.load)
    footprint = co2.EdgeFootprint(best.power_watts, best.intensity_g_per_kwh, best.renewable_attested)
    return Target(
        kind,
        model,
        node_ids=tuple(c.node_id for c in serving),
        pool=pool,
        expected_grams=co2.edge_grams(seconds, footprint),
        expected_latency_ms=seconds * 1000.0,
        features=frozenset.intersection(*(c.features for c in serving)),
    )
