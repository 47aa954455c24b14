"""Which routing policy applies to a request: the copro's default, tightened by the request.

A copro's admin sets a default (`PUT /mcp/v1/copros/{id}/routing`); a request may make it
stricter, never looser:

* `policy`: `edge_only` is a constraint (the data never leaves the edge nodes); a request
  under an `edge_only` copro asking for anything else is refused, not quietly narrowed, so
  the caller learns why the cloud is out of reach. The other three are preferences between
  targets that are all allowed, and a request may pick any of them.
* `max_latency_ms`: the smaller of the two.
* `allow_fallback`: false if either says false.

Which edge nodes may take a copro's work (`edge_pools`): its own nodes' pool first, then the
shared pool, unless the copro's policy is edge_only (its own nodes only: a node of the shared
pool is run by someone else). A request that names no copro goes to the shared pool.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from koprogo_shared import subjects
from koprogo_shared.events import RoutingPolicyName, RoutingPreference

DEFAULT_POLICY: RoutingPolicyName = "prefer_edge"


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    policy: RoutingPolicyName
    max_latency_ms: int | None
    allow_fallback: bool
    # The copro's own policy is edge_only: its work goes to its own nodes alone.
    own_nodes_only: bool = False


@dataclass(frozen=True, slots=True)
class PolicyViolation:
    """The request tried to loosen its copro's policy."""

    message: str


def effective_policy(
    copro: RoutingPreference | None,
    request: RoutingPreference | None,
    default: RoutingPolicyName = DEFAULT_POLICY,
) -> EffectivePolicy | PolicyViolation:
    copro = copro or RoutingPreference()
    request = request or RoutingPreference()
    base = copro.policy or default
    if base == "edge_only" and request.policy not in (None, "edge_only"):
        return PolicyViolation(
            f"this copro's routing policy is edge_only: its data never leaves its edge nodes, "
            f"so a request cannot ask for '{request.policy}'"
        )
    latencies = [v for v in (copro.max_latency_ms, request.max_latency_ms) if v is not None]
    return EffectivePolicy(
        policy=request.policy or base,
        max_latency_ms=min(latencies) if latencies else None,
        allow_fallback=copro.allow_fallback is not False and request.allow_fallback is not False,
        own_nodes_only=base == "edge_only",
    )


def edge_pools(copro_id: str | None, policy: EffectivePolicy) -> tuple[str, ...]:
    """The edge pools whose nodes may take this copro's work, the preferred first."""
    if not copro_id:
        return (subjects.SHARED_POOL,)
    own = subjects.copro_pool(copro_id)
    return (own,) if policy.own_nodes_only else (own, subjects.SHARED_POOL)
