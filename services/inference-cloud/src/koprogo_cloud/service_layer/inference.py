"""Use case: answer one RunInference on a cloud deployment and publish what came of it.

Success -> ChatCompleted (durably, then to the waiting gateway). A failure another target
may not share (provider down, slow, rate-limited, cooling down) -> InferenceAttemptFailed
for the router, which falls back or fails the request; without a routing plan, or for a
request the provider rejects as such, -> ChatFailed.

A streamed request on a deployment that streams sends each piece of text as a ChatDelta
while the provider writes it; once a piece is out, a failing call is not retried nor handed
to another target (the caller already has part of an answer): the chat fails. Whether
streamed or not, the call stops when the caller leaves (`OutcomeSink.caller_gone`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from koprogo_cloud.adapters import metrics
from koprogo_cloud.adapters.outcomes import OutcomeSink
from koprogo_cloud.adapters.providers import ChatProvider, ProviderCall, ProviderResult
from koprogo_cloud.domain.admission import refusal
from koprogo_cloud.domain.cooldown import Cooldown
from koprogo_cloud.domain.deployments import Deployment
from koprogo_cloud.domain.errors import InvalidCommandError, ProviderError, UnmappableRequestError
from koprogo_cloud.domain.failures import FailureOutcome, classify
from koprogo_cloud.domain.retry_policy import retry_delay
from koprogo_cloud.service_layer.streaming import DeltaSender, unless_caller_leaves
from koprogo_shared import chat_outcomes, co2
from koprogo_shared.events import (
    ChatCompleted,
    ChatFailed,
    CloudDeploymentStatus,
    InferenceAttemptFailed,
    RoutingTarget,
    RunInference,
    utc_now,
)
from koprogo_shared.telemetry import generation_span, record_usage

log = logging.getLogger(__name__)

Outcome = ChatCompleted | ChatFailed | InferenceAttemptFailed


@dataclass
class DeploymentRuntime:
    """A configured deployment and its live state: its provider client (None: unavailable), cooldown, latencies."""

    deployment: Deployment
    provider: ChatProvider | None
    unavailable_reason: str | None = None
    cooldown: Cooldown = field(init=False)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=50))

    def __post_init__(self) -> None:
        d = self.deployment
        self.cooldown = Cooldown(d.cooldown_after_failures, d.cooldown_s)


class CloudInferenceService:
    """Runs work items on the deployments' providers, with retries, cooldowns and usage accounting."""

    def __init__(
        self,
        runtimes: Iterable[DeploymentRuntime],
        sink: OutcomeSink,
        *,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.runtimes = {r.deployment.id: r for r in runtimes}
        self._sink = sink
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter

    async def run(self, deployment_id: str, work: RunInference, *, redelivered: bool) -> Outcome:
        """Answer `work` on `deployment_id` and publish the outcome; publishing errors propagate (retry).

        `redelivered`: this item was delivered before (that delivery may have stored its answer)."""
        runtime = self.runtimes[deployment_id]
        dep = runtime.deployment
        _check_ids(work)  # an unusable id is refused before any work
        # Looked up only when an answer may exist (a JetStream round trip per chat otherwise).
        stored = await self._sink.stored_answer(work) if may_be_answered(work, redelivered) else None
        if stored is not None:
            # Redelivered after its answer was stored (the worker died before acking it): the
            # caller gets that answer again; the provider is not paid twice (issue 12, finding 4).
            log.info("request %s: answered before; sending the stored answer again", work.request_id)
            await self._sink.resend(stored, work.reply_subject)
            return stored
        now = self._clock()
        provider = runtime.provider
        refused = refusal(
            dep,
            work,
            now,
            unavailable_reason=None if provider else (runtime.unavailable_reason or "no provider client"),
            cooling_until=runtime.cooldown.until if runtime.cooldown.active(now) else None,
        )
        if refused is not None:
            return await self._fail(runtime, work, refused)
        assert provider is not None  # refused above otherwise
        started = time.perf_counter()
        deltas = DeltaSender(self._sink, dep.source, work) if work.stream and dep.streams else None
        # The span of the provider's answer: `koprogo.node_id` is the deployment's id.
        with generation_span(work.model, dep.id, "cloud") as span:
            async with self._sink.caller_gone(work.request_id) as gone:
                call = await unless_caller_leaves(
                    self._call_with_retries(runtime, provider, dep.models[work.model], work, deltas), gone
                )
            if call.cancelled():
                # The provider reports usage only with the end of an answer: a call stopped before it
                # is abandoned, and the tokens it spent are not known to record.
                log.info("request %s: the caller left; the call to %s was abandoned", work.request_id, dep.id)
                sent = f" after {deltas.sent} streamed pieces" if deltas is not None and deltas.sent else ""
                return await self._fail(
                    runtime,
                    work,
                    FailureOutcome(
                        499,
                        "caller_gone",
                        f"the caller left{sent}; the call to cloud deployment {dep.id!r} was abandoned "
                        "before the provider reported its token usage",
                        False,
                        False,
                    ),
                )
            try:
                result = call.result()
            except _Failed as failed:
                return await self._fail(runtime, work, failed.outcome)
            record_usage(span, result.prompt_tokens, result.completion_tokens)
        seconds = time.perf_counter() - started
        runtime.cooldown.record_success()
        metrics.IN_COOLDOWN.labels(dep.id).set(0)
        runtime.latencies_ms.append(seconds * 1000.0)
        completed = _completed(dep, work, result, seconds)
        metrics.TOKENS.labels(dep.id, "prompt").inc(result.prompt_tokens)
        metrics.TOKENS.labels(dep.id, "completion").inc(result.completion_tokens)
        metrics.CALL_SECONDS.labels(dep.id).observe(seconds)
        await self._sink.publish(completed, work.reply_subject)
        return completed

    async def _call_with_retries(
        self,
        runtime: DeploymentRuntime,
        provider: ChatProvider,
        provider_model: str,
        work: RunInference,
        deltas: DeltaSender | None,
    ) -> ProviderResult:
        dep = runtime.deployment
        max_tokens = work.max_tokens or dep.default_max_tokens
        calls = 0
        while True:
            remaining = (work.deadline - self._clock()).total_seconds()
            if remaining <= 0:
                raise _Failed(
                    FailureOutcome(
                        504,
                        "deadline_exceeded",
                        f"the request expired while cloud deployment {dep.id!r} was retrying ({calls} calls)",
                        False,
                        False,
                    )
                )
            calls += 1
            request = ProviderCall(
                provider_model=provider_model,
                messages=work.messages,
                temperature=work.temperature,
                max_tokens=max_tokens,
                timeout_s=min(dep.timeout_s, remaining),
                request_id=work.request_id,
                controls=work.controls,
                features=dep.effective_features,
            )
            try:
                if deltas is None:
                    result = await provider.complete(request)
                else:
                    result = await provider.stream(request, deltas.send)
            except UnmappableRequestError as exc:
                raise _Failed(FailureOutcome(400, "invalid_request", str(exc), False, False)) from None
            except ProviderError as exc:
                metrics.CALLS.labels(dep.id, exc.kind if exc.status is None else str(exc.status)).inc()
                delay = None
                if deltas is None or not deltas.sent:
                    delay = retry_delay(
                        exc,
                        calls,
                        dep.max_retries,
                        base_s=dep.retry_base_s,
                        jitter=self._jitter(),
                        remaining_s=(work.deadline - self._clock()).total_seconds(),
                    )
                if delay is None:
                    outcome = classify(exc, dep.id, calls)
                    if outcome.counts_for_cooldown and runtime.cooldown.record_failure(self._clock()):
                        metrics.COOLDOWNS.labels(dep.id).inc()
                        metrics.IN_COOLDOWN.labels(dep.id).set(1)
                    if deltas is not None and deltas.sent:
                        # Neither retried nor handed to another target: the caller has part of this answer.
                        outcome = dataclasses.replace(
                            outcome,
                            message=f"{outcome.message} (after {deltas.sent} streamed pieces of the answer)",
                            fallback_worthy=False,
                        )
                    raise _Failed(outcome) from None
                metrics.RETRIES.labels(dep.id).inc()
                await self._sleep(delay)
                continue
            metrics.CALLS.labels(dep.id, "ok").inc()
            return result

    async def _fail(self, runtime: DeploymentRuntime, work: RunInference, outcome: FailureOutcome) -> Outcome:
        dep = runtime.deployment
        metrics.FAILURES.labels(dep.id, outcome.error).inc()
        if outcome.fallback_worthy and work.routing is not None:
            failed = InferenceAttemptFailed(
                id=chat_outcomes.attempt_failed_id(work),
                source=dep.source,
                copro_id=work.copro_id,
                request_id=work.request_id,
                target=RoutingTarget(kind="cloud", model=work.model, deployment=dep.id),
                status=outcome.status,
                error=outcome.error,
                message=outcome.message,
                # Without the router's mark: the next attempt needs none (a fallback is looked up
                # anyway, see `may_be_answered`), and a router older than the field would refuse it.
                work=work.model_copy(update={"may_be_answered": False}),
            )
            await self._sink.attempt_failed(failed)
            return failed
        return await self.report_failure(dep.id, work, outcome.status, outcome.error, outcome.message)

    async def report_failure(
        self, deployment_id: str, work: RunInference, status: int, error: str, message: str
    ) -> ChatFailed:
        """Tell the caller (and the ledger) that this work item will not be answered."""
        # Its id derives from the work item, not the request: the router's own refusal of the
        # same request must not be de-duplicated against it (`chat_outcomes`, as on the edge).
        failed = chat_outcomes.failed(
            work,
            source=self.runtimes[deployment_id].deployment.source,
            status=status,
            error=error,
            message=message,
        )
        await self._sink.publish(failed, work.reply_subject)
        return failed

    def status(self, deployment_id: str, interval_s: float) -> CloudDeploymentStatus:
        """The deployment's heartbeat: available unless keyless or cooling down."""
        runtime = self.runtimes[deployment_id]
        dep = runtime.deployment
        now = self._clock()
        reason = runtime.unavailable_reason if runtime.provider is None else None
        cooling = runtime.cooldown.active(now)
        # Set here too, at every status: a rest that ends with no call after it ends here, not at a success.
        metrics.IN_COOLDOWN.labels(dep.id).set(1 if cooling else 0)
        if reason is None and cooling:
            reason = "cooling down after repeated failures"
        latencies = list(runtime.latencies_ms)
        return CloudDeploymentStatus(
            source=dep.source,
            deployment=dep.id,
            provider=dep.provider,
            models=sorted(dep.models),
            available=reason is None,
            unavailable_reason=reason,
            cooldown_until=runtime.cooldown.until if cooling else None,
            region=dep.region,
            wh_per_1k_tokens=dep.wh_per_1k_tokens,
            intensity_g_per_kwh=dep.intensity_g_per_kwh,
            typical_latency_ms=round(statistics.median(latencies), 3) if latencies else 0.0,
            interval_s=interval_s,
            features=sorted(dep.effective_features),
            # The worker declares its routed-requests consumer before it sends a first status.
            takes_routed_requests=True,
        )


class _Failed(Exception):
    def __init__(self, outcome: FailureOutcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def _completed(dep: Deployment, work: RunInference, result: ProviderResult, seconds: float) -> ChatCompleted:
    return chat_outcomes.completed(
        work,
        source=dep.source,
        content=result.content,
        finish_reason=result.finish_reason,
        tool_calls=result.tool_calls,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        execution_type="cloud",
        node_id=dep.id,
        seconds=seconds,
        co2_grams=co2.cloud_grams(result.total_tokens, dep.footprint),
        logprobs=result.logprobs,
    )


def _check_ids(work: RunInference) -> None:
    try:
        chat_outcomes.check_ids(work)
    except chat_outcomes.UnusableIdsError as exc:
        raise InvalidCommandError(str(exc)) from None


def may_be_answered(work: RunInference, redelivered: bool) -> bool:
    """Whether an answer to `work`'s request may be stored already: this item was delivered
    before, the router says so (a copy routed again), or it is a fallback. The stored answer is
    the request's, not the attempt's: an earlier attempt whose failure was reported, then
    redelivered and answered after all, may have stored it while this attempt waited (its copy is
    a first one, and unflagged)."""
    return redelivered or work.may_be_answered or (work.routing is not None and work.routing.attempt > 1)
