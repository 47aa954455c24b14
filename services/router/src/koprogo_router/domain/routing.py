"""Where a chat runs: a pure decision over the candidates that exist right now.

`choose_target(request, edge candidates, cloud candidates, catalogue)` returns either an
ordered list of targets with the reason, or a refusal carrying the HTTP status the caller
will get. Nothing here does I/O.

1. The models: the requested one, or for `auto` / `auto:<class>` every model of the class.
2. The targets: per model, the live edge nodes serving it in each edge pool the request's
   copro may use (`RoutingRequest.pools`: its own nodes' pool, then the shared one unless
   its policy is edge_only), one target per pool, and every available cloud deployment
   serving it (one without a key or in cooldown is skipped, and named in the refusal if
   nothing else is left).
3. Each target gets an estimate for the request's expected size (`max_tokens`, or
   `DEFAULT_EXPECTED_TOKENS`; the same size for every target, used only to rank them): CO₂
   by the method of `koprogo_shared.co2`, latency from the node's measured tokens/s and load
   or the deployment's recent latency.
   A target that lacks a feature the request needs (stop, seed, a JSON schema, tools...:
   `koprogo_shared.generation`) is left out: it would ignore the constraint. When that
   leaves nothing, the refusal is a 400 `unsupported_parameter` naming what is missing.
4. The policy orders them: `edge_only` keeps the edge alone; `prefer_edge` puts the edge
   first (the copro's own pool before the shared one), then the cloud by grams; `lowest_carbon` sorts everything by grams; `fastest` by
   expected latency. `max_latency_ms` drops targets expected to be slower; without
   `allow_fallback` only the first is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from koprogo_router.domain.policy import EffectivePolicy
from koprogo_shared import co2, subjects
from koprogo_shared.catalogue import CatalogueModel, serve_hint
from koprogo_shared.node_registry import CloudCandidate, EdgeCandidate

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

    @property
    def expected_tokens(self) -> int:
        return self.max_tokens or DEFAULT_EXPECTED_TOKENS


@dataclass(frozen=True, slots=True)
class Target:
    kind: Literal["edge", "cloud", "grid"]
    model: str
    # For the edge, the nodes of one pool that may take the work (they pull it from one
    # shared durable consumer, so the least busy node takes it first), and that pool.
    node_ids: tuple[str, ...] = ()
    pool: str | None = None
    # For the cloud, the deployment that serves `model`.
    deployment: str | None = None
    expected_grams: float = 0.0
    expected_latency_ms: float = 0.0
    # The generation controls every node of the pool (or the deployment) honours.
    features: frozenset[str] = frozenset()

    def describe(self) -> str:
        where = (
            f"edge pool {self.pool} [{', '.join(self.node_ids)}]"
            if self.kind == "edge"
            else f"cloud {self.deployment}"
        )
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


def choose_target(
    request: RoutingRequest,
    edge_candidates: Sequence[EdgeCandidate],
    cloud_candidates: Sequence[CloudCandidate],
    catalogue: Catalogue,
) -> RoutingDecision:
    models = catalogue.auto_class(request.model)
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
    serving = sorted(
        (c for c in edge_candidates if model in c.models and pool in c.pools),
        key=lambda c: (c.load, -c.tokens_per_second, c.node_id),
    )
    if request.features:
        # A pool is one shared consumer: any of its nodes may take the work, so keep the nodes
        # that honour the request (another pool would need its own subject).
        serving = [c for c in serving if request.features <= c.features] or serving
    if not serving:
        return None
    best = serving[0]
    speed = best.tokens_per_second or UNMEASURED_TOKENS_PER_SECOND
    # The work waits for what the node already has in hand, then runs.
    seconds = request.expected_tokens / speed * (1 + best.load)
    footprint = co2.EdgeFootprint(best.power_watts, best.intensity_g_per_kwh, best.renewable_attested)
    return Target(
        "edge",
        model,
        node_ids=tuple(c.node_id for c in serving),
        pool=pool,
        expected_grams=co2.edge_grams(seconds, footprint),
        expected_latency_ms=seconds * 1000.0,
        features=frozenset.intersection(*(c.features for c in serving)),
    )


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
                    t.kind != "edge",
                    preference[t.model],
                    pool_rank.get(t.pool or "", 0),
                    t.expected_grams,
                    t.expected_latency_ms,
                ),
            )
        case "lowest_carbon":
            return sorted(
                targets, key=lambda t: (t.expected_grams, t.expected_latency_ms, preference[t.model])
            )
        case "fastest":
            return sorted(
                targets, key=lambda t: (t.expected_latency_ms, t.expected_grams, preference[t.model])
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
