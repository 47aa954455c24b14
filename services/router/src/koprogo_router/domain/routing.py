"""Where a chat runs: a pure decision over the candidates that exist right now.

`choose_target` takes the request, the live edge candidates and the catalogue, and
returns either an ordered list of targets with the reason, or a refusal carrying
the HTTP status the caller will get. Cloud deployments, copro policies and carbon
scoring extend this function (issue 4); nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from koprogo_shared.catalogue import CatalogueModel
from koprogo_shared.node_registry import EdgeCandidate


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    model: str


@dataclass(frozen=True, slots=True)
class Target:
    kind: Literal["edge", "cloud", "grid"]
    model: str
    # For the edge, the pool of nodes that may take the work (they pull it from one
    # shared durable consumer, so the least busy node takes it first).
    node_ids: tuple[str, ...]


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


def choose_target(
    request: RoutingRequest,
    edge_candidates: Sequence[EdgeCandidate],
    find_model: Callable[[str], CatalogueModel | None],
    known_models: Sequence[str],
) -> RoutingDecision:
    model = find_model(request.model)
    if model is None:
        return Refusal(
            status=404,
            error="model_not_found",
            message=f"unknown model '{request.model}'; known models: {', '.join(known_models)}",
            known_models=tuple(known_models),
        )
    serving = sorted(
        (c for c in edge_candidates if request.model in c.models),
        key=lambda c: (c.load, -c.tokens_per_second, c.node_id),
    )
    if serving:
        best = serving[0]
        return Route(
            targets=(Target("edge", request.model, tuple(c.node_id for c in serving)),),
            reason=(
                f"edge: {len(serving)} live node(s) serve {request.model}; "
                f"least loaded {best.node_id} ({best.in_flight}/{best.capacity})"
            ),
        )
    if model.edge_compatible:
        missing = f"no live edge node serves '{request.model}' (start one: koprogo-node -m {request.model})"
    else:
        missing = (
            f"'{request.model}' is a {model.provider} cloud model and no {model.provider} provider is "
            "configured in this deployment"
        )
    return Refusal(status=503, error="no_target_available", message=missing)
