"""One routing decision for one request, and the work item it makes: the router's and the gateway's.

`decide` merges the request's wishes with its copro's policy and the deployment's default
(`policy.effective_policy`), then chooses over what is alive now (`choice.choose_target`): a
`Refusal` (the HTTP status the caller will get) or a `Decided` plan. `work_of` is the
`RunInference` a plan makes of its request, whoever routed it. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from koprogo_shared.catalogue import auto_class, find_model, known_model_ids
from koprogo_shared.events import (
    ChatRequested,
    RoutingPlan,
    RoutingPolicyName,
    RoutingTarget,
    RunInference,
    derived_event_id,
    required_features,
)
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.routing.choice import Catalogue, GridRule, Refusal, RoutingRequest, Target, choose_target
from koprogo_shared.routing.policy import PolicyViolation, edge_pools, effective_policy
from koprogo_shared.routing.policy_book import PolicyBook


def default_catalogue() -> Catalogue:
    return Catalogue(find_model=find_model, known_models=known_model_ids(), auto_class=auto_class)


@dataclass(frozen=True, slots=True)
class Decided:
    """Where the request goes: its plan (first target first; the policy that ordered it is `plan.policy`)."""

    plan: RoutingPlan

    @property
    def first(self) -> RoutingTarget:
        return self.plan.targets[0]


def decide(
    request: ChatRequested,
    registry: NodeRegistry,
    policies: PolicyBook,
    now: float,
    *,
    catalogue: Catalogue,
    default_policy: RoutingPolicyName,
    grid_rule: GridRule,
) -> Decided | Refusal:
    """Route `request` over the candidates `registry` holds alive at `now` (monotonic seconds)."""
    policy = effective_policy(policies.policy_of(request.copro_id), request.routing, default_policy)
    if isinstance(policy, PolicyViolation):
        return Refusal(403, "routing_policy_violation", policy.message)
    decision = choose_target(
        RoutingRequest(
            request.model,
            policy,
            request.max_tokens,
            required_features(request.messages, request.controls),
            edge_pools(request.copro_id, policy),
            prompt_chars=sum(len(m.content) for m in request.messages),
        ),
        registry.alive(now),
        registry.cloud(now),
        catalogue,
        grid_rule,
    )
    if isinstance(decision, Refusal):
        return decision
    return Decided(
        RoutingPlan(
            policy=policy.policy,
            allow_fallback=policy.allow_fallback,
            reason=decision.reason,
            targets=[_routing_target(t) for t in decision.targets],
        )
    )


def work_of(request: ChatRequested, plan: RoutingPlan, *, source: str, may_be_answered: bool) -> RunInference:
    """The first attempt's work item: the same id and time whoever makes it, however often (the work
    stream drops a copy; a worker looks for an answer stored since a little before `time`).

    `may_be_answered`: the request was delivered before (an earlier copy may have run)."""
    return RunInference(
        id=derived_event_id(request.id, "run"),
        time=request.time,
        source=source,
        copro_id=request.copro_id,
        request_id=request.id,
        model=plan.targets[0].model,
        messages=request.messages,
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        reply_subject=request.reply_subject,
        deadline=request.deadline,
        routing=plan,
        stream=request.stream,
        controls=request.controls,
        may_be_answered=may_be_answered,
    )


def _routing_target(target: Target) -> RoutingTarget:
    return RoutingTarget(kind=target.kind, model=target.model, deployment=target.deployment, pool=target.pool)
