"""Use cases: a chat was requested, send it where it can run; an attempt failed, try the next target.

The router keeps no memory of requests: the plan travels with the work (`RunInference.routing`)
and comes back with an `InferenceAttemptFailed`, so any router replica can fall back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from koprogo_router.adapters.bus import Bus, HubUnreachableError
from koprogo_router.adapters.metrics import count_decision, count_fallback
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatFailed,
    ChatRequested,
    InferenceAttemptFailed,
    RoutingPolicyName,
    RoutingTarget,
    RunInference,
    chat_failed_id,
    derived_event_id,
    utc_now,
)
from koprogo_shared.node_registry import NodeRegistry
from koprogo_shared.routing.choice import Catalogue, GridRule, Refusal
from koprogo_shared.routing.decision import decide, default_catalogue, work_of
from koprogo_shared.routing.policy import DEFAULT_POLICY
from koprogo_shared.routing.policy_book import PolicyBook

SOURCE = "koprogo/router"
# What a building's caller gets for a cloud chat while its line to the hub is down.
OFFLINE = "offline"
OFFLINE_MESSAGE = (
    "the building is cut off from the hub: cloud models are unavailable until the line returns; "
    "the building's own models still answer"
)


class TargetsAwayError(Exception):
    """A redelivered request found no live target: retried later (its work may be running)."""


@dataclass
class Dispatcher:
    bus: Bus
    registry: NodeRegistry
    policies: PolicyBook
    catalogue: Catalogue = field(default_factory=default_catalogue)
    default_policy: RoutingPolicyName = DEFAULT_POLICY
    # What makes an `auto` chat long enough for the grid (`RouterSettings.grid_min_*`).
    grid_rule: GridRule = field(default_factory=GridRule)
    # A building's router (its server's JetStream domain says so): cloud work goes to the hub's
    # stream over the leaf link, and a cut line answers `offline` at once (docs/building-offline.md).
    cloud_at_hub: bool = False

    async def on_chat_requested(self, request: ChatRequested, *, redelivered: bool = False) -> None:
        """Route the request, or refuse it durably (the gateway answers its caller).

        `redelivered`: this delivery is not the first (the router's ack of an earlier one may
        have been lost, e.g. with NATS): its work may be running already. Finding no live target
        then raises TargetsAwayError (retried later) rather than refusing work that may be
        answered; any other decision is taken again (the work id is de-duplicated).
        """
        if request.routed is not None:
            # Routed by a gateway and stored for its worker (`subjects.routed_chat_requested`):
            # this router's filter should not have delivered it (a durable that kept an earlier
            # release's filter); routing it again would run it twice.
            count_decision("none", "routed_by_gateway")
            return
        if _expired(request.deadline):
            await self._refuse(
                request, Refusal(504, "deadline_exceeded", "the request expired before routing")
            )
            return
        now = time.monotonic()
        decision = decide(
            request,
            self.registry,
            self.policies,
            now,
            catalogue=self.catalogue,
            default_policy=self.default_policy,
            grid_rule=self.grid_rule,
        )
        if isinstance(decision, Refusal):
            if self.cloud_at_hub and decision.status == 503 and not self.registry.cloud(now):
                decision = Refusal(503, OFFLINE, f"{decision.message}; {OFFLINE_MESSAGE}")
            if redelivered and decision.status == 503:
                raise TargetsAwayError(f"{decision.error}: {decision.message}")
            await self._refuse(request, decision)
            return
        # Routed again: an earlier copy may have run (and be past the de-dup window).
        await self._send(work_of(request, decision.plan, source=SOURCE, may_be_answered=redelivered))
        # Counted once sent: a send that fails is retried with the request, and decided again.
        count_decision(decision.first.kind, decision.plan.policy)

    async def on_attempt_failed(self, failed: InferenceAttemptFailed) -> None:
        """Try the plan's next target if fallback is allowed and time is left; else fail the request.

        The router marks no fallback's copy `may_be_answered`: a cloud worker looks up the stored
        answer of every attempt after the first, and an edge node looks up every item. (A copy of a
        marked work keeps its mark: the building's HubUnreachable path; harmless.)"""
        work = failed.work
        plan = work.routing
        failures = [*(plan.failures if plan else []), f"{_where(failed.target)}: {failed.error}"]
        if plan is None or not plan.allow_fallback or plan.attempt >= len(plan.targets):
            await self._fail(work, failed.status, failed.error, _final_message(failed, failures))
            return
        if _expired(work.deadline):
            await self._fail(work, 504, "deadline_exceeded", _final_message(failed, failures))
            return
        attempt = plan.attempt + 1
        target = plan.targets[attempt - 1]
        await self._send(
            work.model_copy(
                update={
                    "id": derived_event_id(work.request_id, f"run-{attempt}"),
                    "source": SOURCE,
                    "time": utc_now(),
                    "model": target.model,
                    "routing": plan.model_copy(update={"attempt": attempt, "failures": failures}),
                }
            )
        )
        count_fallback(failed.target.kind, target.kind)  # once sent, as a decision

    async def _send(self, work: RunInference) -> None:
        assert work.routing is not None
        target = work.routing.targets[work.routing.attempt - 1]
        if target.kind == "cloud" and target.deployment is not None:
            subject = subjects.run_inference_cloud(work.copro_id, target.deployment)
        elif target.kind == "grid":
            subject = subjects.run_inference_grid(target.model)
        else:
            subject = subjects.run_inference_edge(target.model, target.pool or subjects.SHARED_POOL)
        if target.kind != "cloud" or not self.cloud_at_hub:
            await self.bus.publish(subject, work)
            return
        try:
            await self.bus.publish_at_hub(subject, work)
        except HubUnreachableError:
            # As if the cloud worker had failed the attempt: the plan's next target (the
            # building's own edge, when fallback is allowed), else `offline` to the caller.
            await self.on_attempt_failed(
                InferenceAttemptFailed(
                    id=derived_event_id(work.id, "hub-unreachable"),
                    source=SOURCE,
                    copro_id=work.copro_id,
                    request_id=work.request_id,
                    target=target,
                    status=503,
                    error=OFFLINE,
                    message=OFFLINE_MESSAGE,
                    work=work,
                ),
            )

    async def _refuse(self, request: ChatRequested, refusal: Refusal) -> None:
        await self._publish_failure(
            ChatFailed(
                id=chat_failed_id(request.id),
                source=SOURCE,
                copro_id=request.copro_id,
                request_id=request.id,
                status=refusal.status,
                error=refusal.error,
                message=refusal.message,
                known_models=list(refusal.known_models) or None,
            ),
            request.reply_subject,
        )
        count_decision("none", refusal.error)  # once published, as a routed request's

    async def _fail(self, work: RunInference, status: int, error: str, message: str) -> None:
        await self._publish_failure(
            ChatFailed(
                id=chat_failed_id(work.request_id),
                source=SOURCE,
                copro_id=work.copro_id,
                request_id=work.request_id,
                status=status,
                error=error,
                message=message,
            ),
            work.reply_subject,
        )

    async def _publish_failure(self, failed: ChatFailed, reply_subject: str) -> None:
        # Durable first (the ledger records the failure), then straight to the waiting gateway.
        await self.bus.publish(subjects.chat_failed(failed.copro_id), failed)
        await self.bus.reply(reply_subject, failed)


def _where(target: RoutingTarget) -> str:
    return f"{target.kind} {target.deployment or target.model}"


def _final_message(failed: InferenceAttemptFailed, failures: list[str]) -> str:
    if len(failures) == 1:
        return failed.message
    return f"{failed.message} (after {len(failures)} attempts: {'; '.join(failures)})"


def _expired(deadline: datetime) -> bool:
    return deadline <= utc_now()
