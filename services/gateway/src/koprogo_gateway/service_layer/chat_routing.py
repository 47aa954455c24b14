"""Where a chat request is stored: routed by the gateway itself, or for the router.

A request whose first target is a cloud deployment or an edge pool is routed here, with the
router's own rules (`koprogo_shared.routing.decision`) over the gateway's copy of the node
registry and of the copros' policies, and stored once with its plan (`ChatRequested.routed`) on
the subject that names the deployment (`subjects.routed_chat_requested`) or the pool and model
(`subjects.routed_edge_chat_requested`), where its workers take it: one stored write, one
delivery and one process fewer on the chat's path (docs/decisions.md, *The request and its
routing stored once*). Everything else goes to the router as before, on
`subjects.chat_requested`: a refusal (the router records and answers it), a grid first target,
a deployment whose workers, or a pool one of whose alive nodes, do not take routed requests (a
release before this one, or a node whose hub's permissions do not let it: it would get none of
them), the shared edge pool unless the operator says its nodes are its own (`edge_pools`: a
routed request reaches the nodes with its user id, which the router's work item leaves out), and
every request of a building's gateway (its router sends cloud work over the leaf link). A failed attempt falls back through the router
either way (`InferenceAttemptFailed`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import Counter

from koprogo_shared import subjects
from koprogo_shared.events import ChatRequested
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.routing.choice import Catalogue, GridRule, Refusal
from koprogo_shared.routing.decision import decide, default_catalogue
from koprogo_shared.routing.policy_book import PolicyBook

# With the router's labels (`koprogo_router_decisions_total`), so that the two add up to every
# chat routed (deploy/prometheus/recording.yml does).
DECISIONS = Counter(
    "koprogo_gateway_routing_decisions_total",
    "Chats the gateway routed itself (to a cloud deployment or an edge pool), by first target's kind and policy",
    ["target", "reason"],
)


def count_stored(request: ChatRequested) -> None:
    """Count a request once stored, if the gateway routed it (the router counts the others)."""
    if request.routed is not None:
        DECISIONS.labels(target=request.routed.targets[0].kind, reason=request.routed.policy).inc()


@dataclass
class ChatRouting:
    registry: NodeRegistry
    # The copros' policies and the routers' own defaults (DEFAULT_ROUTING_POLICY, GRID_MIN_*), as
    # the routers stored them: without those, every request goes to the router. None: every
    # request goes to the router (a building's gateway; GATEWAY_ROUTES_CLOUD=false).
    policies: PolicyBook | None
    catalogue: Catalogue = field(default_factory=default_catalogue)
    # The edge pools routed here (GATEWAY_ROUTES_EDGE_POOLS): a copro's own (`copro`), the shared
    # one too (`all`), or none.
    edge_pools: Literal["copro", "all", "none"] = "copro"

    def place(self, request: ChatRequested) -> tuple[str, ChatRequested]:
        """The subject to store `request` on, and the request to store (with its plan, if routed here)."""
        unrouted = subjects.chat_requested(request.copro_id), request
        if self.policies is None or (defaults := self.policies.router_defaults()) is None:
            return unrouted
        now = time.monotonic()
        # Where a chat may be routed here: the deployments whose workers take routed requests, and
        # the (pool, model) pairs of the edge nodes all of whose alive nodes do. None (workers of
        # an earlier release): the router decides, without this gateway deciding first for nothing.
        clouds = {c.deployment for c in self.registry.cloud(now) if c.available and c.takes_routed_requests}
        edges = self._routable_edges(now)
        if not clouds and not edges:
            return unrouted
        decision = decide(
            request,
            self.registry,
            self.policies,
            now,
            catalogue=self.catalogue,
            default_policy=defaults.policy,
            grid_rule=GridRule(defaults.grid_min_prompt_chars, defaults.grid_min_max_tokens),
        )
        if isinstance(decision, Refusal):
            return unrouted
        first = decision.first
        # `decide` picks available deployments and alive nodes only: the same as asking the registry again.
        if first.kind == "cloud" and first.deployment in clouds:
            subject = subjects.routed_chat_requested(request.copro_id, first.deployment)
        elif first.kind == "edge" and first.pool is not None and (first.pool, first.model) in edges:
            subject = subjects.routed_edge_chat_requested(request.copro_id, first.pool, first.model)
        else:
            return unrouted
        return subject, request.model_copy(update={"routed": decision.plan})

    def _routable_edges(self, now: float) -> set[tuple[str, str]]:
        """The (pool, model) pairs this gateway may route to: allowed by `edge_pools`, and every alive
        node of the pair takes routed requests (a node of an earlier release shares the pair's work
        queue only: routing past it would leave it idle, and the requests stranded if the others stop)."""
        if self.edge_pools == "none":
            return set()
        taking: dict[tuple[str, str], bool] = {}
        for node in self.registry.alive(now):
            for pool in node.pools:
                if pool == subjects.SHARED_POOL and self.edge_pools != "all":
                    continue
                for model in node.models:
                    taking[pool, model] = taking.get((pool, model), True) and node.takes_routed_requests
        return {pair for pair, takes in taking.items() if takes}
