"""Where a chat request is stored: routed by the gateway itself, or for the router.

A request whose first target is a cloud deployment is routed here, with the router's own rules
(`koprogo_shared.routing.decision`) over the gateway's copy of the node registry and of the
copros' policies, and stored once with its plan (`ChatRequested.routed`) on the subject that
names the deployment (`subjects.routed_chat_requested`), where the deployment's workers take it:
one stored write, one delivery and one process fewer on the chat's path (docs/decisions.md, *The
request and its routing stored once*). Everything else goes to the router as before, on
`subjects.chat_requested`: a refusal (the router records and answers it), an edge or grid first
target, a deployment whose workers do not take routed requests yet (a release before this one),
and every request of a building's gateway (its router sends cloud work over the leaf link).
A failed attempt falls back through the router either way (`InferenceAttemptFailed`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
    "Chats the gateway routed itself (to a cloud deployment), by first target's kind and policy",
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

    def place(self, request: ChatRequested) -> tuple[str, ChatRequested]:
        """The subject to store `request` on, and the request to store (with its plan, if routed here)."""
        unrouted = subjects.chat_requested(request.copro_id), request
        if self.policies is None or (defaults := self.policies.router_defaults()) is None:
            return unrouted
        now = time.monotonic()
        # The deployments a chat may be routed to here. None (an edge-only stack, workers of an
        # earlier release): the router decides, without this gateway deciding first for nothing.
        routable = {c.deployment for c in self.registry.cloud(now) if c.available and c.takes_routed_requests}
        if not routable:
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
        # `decide` picks available deployments only: the same as asking the registry again.
        if (
            isinstance(decision, Refusal)
            or decision.first.kind != "cloud"
            or decision.first.deployment not in routable
        ):
            return unrouted
        return (
            subjects.routed_chat_requested(request.copro_id, decision.first.deployment),
            request.model_copy(update={"routed": decision.plan}),
        )
