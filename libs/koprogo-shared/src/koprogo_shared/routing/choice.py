"""Where a chat runs: a pure decision over the candidates that exist right now.

`choose_target(request, edge candidates, cloud candidates, catalogue)` returns either an
ordered list of targets with the reason, or a refusal carrying the HTTP status the caller
will get. Nothing here does I/O.

1. The models: the requested one, or for `auto` / `auto:<class>` every model of the class.
2. The targets: per model, the live edge nodes serving it in each edge pool the request's
   copro may use (`RoutingRequest.pools`: its own nodes' pool, then the shared one unless
   its policy is edge_only), one target per pool, and every available cloud deployment
   serving it (one without a key or in cooldown is skipped, and named in the refusal if
   nothing else is left). A long `auto` chat (`routing.grid`: never under edge_only) may also
   go to the grid: the shared pool's live nodes that joined it, one target per model.
3. Each target gets an estimate for the request's expected size (`max_tokens`, or
   `DEFAULT_EXPECTED_TOKENS`; the same size for every target, used only to rank them): CO₂
   by the method of `koprogo_shared.co2`, latency from the node's measured tokens/s and load
   or the deployment's recent latency.
   A target that lacks a feature the request needs (stop, seed, a JSON schema, tools...:
   `koprogo_shared.generation`) is left out: it would ignore the constraint. When that
   leaves nothing, the refusal is a 400 `unsupported_parameter` naming what is missing.
4. The policy orders them: `edge_only` keeps the edge alone; `prefer_edge` puts the grid
   first (a long chat then leaves the interactive edge nodes free for short ones), then the
   edge (the copro's own pool before the shared one), then the cloud by grams;
   `lowest_carbon` sorts everything by grams; `fastest` by expected latency (both put the
   grid first on a tie: it is the same kind of node). The routing reason says which rule
   sent a long chat where. `max_latency_ms` drops targets expected to be slower; without
   `allow_fallback` only the first is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from koprogo_shared import co2
from koprogo_shared.catalogue import serve_hint
from koprogo_shared.node_registry import CloudCandidate, EdgeCandidate
from koprogo_shared.routing.grid import GridRule, grid_candidate, grid_target
from koprogo_shared.routing.policy import EffectivePolicy
from koprogo_shared.routing.targets import (
    UNMEASURED_CLOUD_LATENCY_MS,
    Catalogue,
    Refusal,
    Route,
    RoutingDecision,
    RoutingRequest,
    Target,
    node_target,
)

# Where a long chat's grid target goes in each policy's order (said in the routing reason).
_GRID_ORDER = {
    "prefer_edge": "the grid before the interactive edge pools, which stay free for short chats",
    "lowest_carbon": "the grid ranked with the edge by grams, first on a tie",
    "fastest": "the grid ranked with the edge by expected latency, first on a tie",
}
_KIND_RANK = {"grid": 0, "edge": 1, "cloud": 2}

# The decision's types live in `targets`; callers take them from here with `choose_target`.
__all__ = [
    "Catalogue",
    "GridRule",
    "Refusal",
    "Route",
    "RoutingDecision",
    "RoutingRequest",
    "Target",
    "choose_target",
]


def choose_target(
    request: RoutingRequest,
    edge_candidates: Sequence[EdgeCandidate],
    cloud_candidates: Sequence[CloudCandidate],
    catalogue: Catalogue,
    grid: GridRule | None = None,
) -> RoutingDecision:
    """Route `request`; with a `grid` rule, a long `auto` chat may go to the grid (`routing.grid`)."""
    models = catalogue.auto_class(request.model)
    long_chat = None if grid is None else grid_candidate(request, models is not None, grid)
    if models is None:
        # A model outside the catalogue is known while something serves it: a GGUF a node
        # serves under its own id (`koprogo up --model id=file.gguf`), or a cloud deployment's.
        served = any(request.model in c.models for c in cloud_candidates) or any(
            request.model in c.models for c in edge_candidates
        )
        if catalogue.find_model(request.model) is None and not served:
            return Refusal(
                status=404,
                error="model_not_found",
                message=f"unknown model '{request.model}'; known models: {', '.join(catalogue.known_models)}",
                known_models=tuple(catalogue.known_models),
            )
        models = (request.model,)
    policy = request.policy
    every = [t for m in models for t in _targets_for(m, request, edge_candidates, cloud_candidates)]
    if long_chat is not None:
        every += [t for m in models if (t := grid_target(m, request, edge_candidates)) is not None]
    if policy.policy == "edge_only":
        every = [t for t in every if t.kind == "edge"]
    if not every:
        return _nothing_serves(request, models, cloud_candidates, catalogue)
    targets = [t for t in every if request.features <= t.features]
    if not targets:
        return _lacking_features(request, every)
    ordered = _order(targets, models, policy, request.pools)
    if policy.max_latency_ms is not None:
        fast_enough = [t for t in ordered if t.expected_latency_ms <= policy.max_latency_ms]
        if not fast_enough:
            return Refusal(
                status=503,
                error="no_target_available",
                message=(
                    f"no target is expected to answer within max_latency_ms={policy.max_latency_ms}; "
                    f"the fastest is {min(ordered, key=lambda t: t.expected_latency_ms).describe()}"
                ),
            )
        ordered = fast_enough
    if not policy.allow_fallback:
        ordered = ordered[:1]
    first, rest = ordered[0], ordered[1:]
    reason = f"{policy.policy}: {first.describe()}"
    if long_chat is not None and any(t.kind == "grid" for t in ordered):
        reason = f"{policy.policy}, long chat ({long_chat}): {_GRID_ORDER[policy.policy]}; {first.describe()}"
    if rest:
        reason += f"; fallback: {', '.join(f'{t.kind} {t.deployment or t.model}' for t in rest)}"
    return Route(targets=tuple(ordered), reason=reason)


def _targets_for(
    model: str,
    request: RoutingRequest,
    edge_candidates: Sequence[EdgeCandidate],
    cloud_candidates: Sequence[CloudCandidate],
) -> list[Target]:
    targets = [
        target
        for pool in request.pools
        if (target := _edge_target(model, pool, request, edge_candidates)) is not None
    ]
    for deployment in sorted(cloud_candidates, key=lambda c: c.deployment):
        if deployment.available and model in deployment.models:
            targets.append(
                Target(
                    "cloud",
                    model,
                    deployment=deployment.deployment,
                    expected_grams=co2.cloud_grams(request.expected_tokens, deployment.footprint),
                    expected_latency_ms=deployment.typical_latency_ms or UNMEASURED_CLOUD_LATENCY_MS,
                    features=deployment.features,
                )
            )
    return targets


def _edge_target(
    model: str, pool: str, request: RoutingRequest, edge_candidates: Sequence[EdgeCandidate]
) -> Target | None:
    """The live nodes of `pool` serving `model`, as one target (None when there are none)."""
    nodes = [c for c in edge_candidates if model in c.models and pool in c.pools]
    return node_target("edge", model, request, nodes, pool)


def _order(
    targets: list[Target], models: Sequence[str], policy: EffectivePolicy, pools: Sequence[str]
) -> list[Target]:
    preference = {m: i for i, m in enumerate(models)}
    pool_rank = {p: i for i, p in enumerate(pools)}
    match policy.policy:
        case "edge_only" | "prefer_edge":
            return sorted(
                targets,
                key=lambda t: (
                    _KIND_RANK[t.kind],
                    preference[t.model],
                    pool_rank.get(t.pool or "", 0),
                    t.expected_grams,
                    t.expected_latency_ms,
                ),
            )
        case "lowest_carbon":
            return sorted(
                targets,
                key=lambda t: (
                    t.expected_grams,
                    t.expected_latency_ms,
                    _KIND_RANK[t.kind],
                    preference[t.model],
                ),
            )
        case "fastest":
            return sorted(
                targets,
                key=lambda t: (
                    t.expected_latency_ms,
                    t.expected_grams,
                    _KIND_RANK[t.kind],
                    preference[t.model],
                ),
            )


def _nothing_serves(
    request: RoutingRequest,
    models: Sequence[str],
    cloud_candidates: Sequence[CloudCandidate],
    catalogue: Catalogue,
) -> Refusal:
    asked = f"'{request.model}'" + (f" (any of {', '.join(models)})" if len(models) > 1 else "")
    if request.policy.own_nodes_only:
        return Refusal(
            status=503,
            error="no_target_available",
            message=(
                f"policy edge_only: none of this copro's own edge nodes serves {asked}, and its data "
                "goes to no other node (`koprogo node join --copro <copro id>` adds one to its pool); "
                f"{_serve_on_edge(models, catalogue)}"
            ),
        )
    if request.policy.policy == "edge_only":
        return Refusal(
            status=503,
            error="no_target_available",
            message=(
                f"policy edge_only: no live edge node serves {asked}, and this request's data may not "
                f"leave the edge; {_serve_on_edge(models, catalogue)}"
            ),
        )
    unavailable = [
        f"{c.deployment}: {c.unavailable_reason or 'unavailable'}"
        for c in cloud_candidates
        if not c.available and any(m in c.models for m in models)
    ]
    model = catalogue.find_model(models[0]) if len(models) == 1 else None
    if model is not None and model.edge_compatible:
        message = f"no live edge node serves {asked}; to serve it: {serve_hint(model.id)}"
    elif model is not None:
        message = f"{asked} is a {model.provider} cloud model and no {model.provider} deployment is available"
    else:
        message = f"no live edge node or available cloud deployment serves {asked}"
    if unavailable:
        message += f" ({'; '.join(unavailable)})"
    return Refusal(status=503, error="no_target_available", message=message)


def _lacking_features(request: RoutingRequest, targets: Sequence[Target]) -> Refusal:
    """Targets serve the model, but none honours everything the request sets."""
    lacking = "; ".join(
        f"{t.kind} {t.deployment or t.model} lacks {', '.join(sorted(request.features - t.features))}"
        for t in targets
    )
    missing = sorted(set().union(*(request.features - t.features for t in targets)))
    return Refusal(
        status=400,
        error="unsupported_parameter",
        message=(
            f"no target serving '{request.model}' honours every parameter this request sets ({lacking}); "
            f"send it without {', '.join(repr(m) for m in missing)} or ask for a model whose target "
            "honours it (/mcp/v1/models lists each model's `supports`)"
        ),
    )


def _serve_on_edge(models: Sequence[str], catalogue: Catalogue) -> str:
    """How to serve the first edge-capable model of `models` (the catalogue's hint)."""
    for model_id in models:
        model = catalogue.find_model(model_id)
        if model is None or model.edge_compatible:
            return f"to serve {model_id}: {serve_hint(model_id)}"
    return f"{', '.join(models)} cannot run on an edge node: ask for a local model or `auto`"
