"""What a worker publishes for a RunInference, built one way by the edge node and the cloud worker.

Every event a work item produces has an id derived from the work, so a redelivered item
produces the same ids and JetStream de-duplicates them (the ledger applies each once):

    ChatCompleted           from the request id ("completed"): one answer per request,
                            whichever attempt or target gave it
    ChatFailed              from the work item's id ("failed"), not the request's: the
                            router's own refusal of the same request derives from the
                            request id (`events.chat_failed_id`) and must not be
                            de-duplicated against the worker's
    InferenceAttemptFailed  from the work item's id ("attempt_failed"): one per attempt

`check_ids` refuses an item whose ids are not UUIDs before any work is done
(`UnusableIdsError`; each worker turns it into its own poison error).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from koprogo_shared import co2
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ExecutionInfo,
    ExecutionType,
    FinishReason,
    RoutingSummary,
    RunInference,
    Usage,
    derived_event_id,
)
from koprogo_shared.generation import TokenLogprob, ToolCall

# The longest a chat may live: the gateway refuses a CHAT_TIMEOUT_S above it. Every run of a
# request (the item delivered again, a copy routed again, a fallback) is made within that life,
# so a cloud worker looking for an earlier run's stored answer reads back `ANSWER_LOOKBACK`:
# the life plus a minute for the clocks of the gateways (which set the deadline), the routers
# (which stamp the work) and nats-server (which stamps the stored answers) to differ.
CHAT_LIFETIME_MAX_S = 540
ANSWER_LOOKBACK = timedelta(seconds=CHAT_LIFETIME_MAX_S + 60)


class UnusableIdsError(ValueError):
    """The work item's id or request id is not a UUID: no outcome id can be derived from it."""

    def __init__(self, work: RunInference) -> None:
        super().__init__(f"work item {work.id!r} / request {work.request_id!r}: ids must be UUIDs")


def _derived(work: RunInference, parent_id: str, what: str) -> str:
    try:
        return derived_event_id(parent_id, what)
    except ValueError:
        raise UnusableIdsError(work) from None


def completed_id(work: RunInference) -> str:
    """The id of the ChatCompleted answering `work` (from its request id)."""
    return _derived(work, work.request_id, "completed")


def failed_id(work: RunInference) -> str:
    """The id of the ChatFailed a worker reports for `work` (from the work item's id)."""
    return _derived(work, work.id, "failed")


def attempt_failed_id(work: RunInference) -> str:
    """The id of the InferenceAttemptFailed a worker reports for `work` (from the work item's id)."""
    return _derived(work, work.id, "attempt_failed")


def node_execution_type(work: RunInference) -> ExecutionType:
    """How an edge node's answer to `work` is counted: "grid" when the plan sent it to the grid.

    Read from the plan's current target, not from the consumer that took the item: the plan
    is what the router decided and what the caller's `execution_info.routing` reports. Work
    without a plan (published by hand) is edge work.
    """
    plan = work.routing
    if plan is not None and 1 <= plan.attempt <= len(plan.targets):
        if plan.targets[plan.attempt - 1].kind == "grid":
            return "grid"
    return "edge"


def check_ids(work: RunInference) -> None:
    """Raise UnusableIdsError unless every outcome id of `work` can be derived: both ids parse as
    UUIDs (all `derived_event_id` needs; parsing is cheaper than deriving them here)."""
    try:
        uuid.UUID(work.request_id)
        uuid.UUID(work.id)
    except ValueError:
        raise UnusableIdsError(work) from None


def completed(
    work: RunInference,
    *,
    source: str,
    content: str,
    finish_reason: FinishReason,
    tool_calls: list[ToolCall] | None,
    prompt_tokens: int,
    completion_tokens: int,
    execution_type: ExecutionType,
    node_id: str,
    seconds: float,
    co2_grams: float,
    logprobs: list[TokenLogprob] | None = None,
) -> ChatCompleted:
    """The answer to `work`: usage as counted (tokenizer or provider), CO₂ and what it saved.

    `node_id` is the edge node or the cloud deployment that ran it; `seconds` the time it
    took; `co2_grams` what it emitted (`co2.edge_grams` or `co2.cloud_grams`).
    """
    total = prompt_tokens + completion_tokens
    return ChatCompleted(
        id=completed_id(work),
        source=source,
        copro_id=work.copro_id,
        request_id=work.request_id,
        model=work.model,
        content=content,
        finish_reason=finish_reason,
        tool_calls=tool_calls,
        logprobs=logprobs,
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=total),
        execution_info=ExecutionInfo(
            execution_type=execution_type,
            node_id=node_id,
            latency_ms=round(seconds * 1000.0, 3),
            co2_grams=co2_grams,
            co2_saved_grams=co2.saved_grams(total, co2_grams),
            routing=RoutingSummary.of(work.routing),
        ),
    )


def failed(work: RunInference, *, source: str, status: int, error: str, message: str) -> ChatFailed:
    """`work` will not be answered: `status` is the HTTP status its caller gets."""
    return ChatFailed(
        id=failed_id(work),
        source=source,
        copro_id=work.copro_id,
        request_id=work.request_id,
        status=status,
        error=error,
        message=message,
    )


def delta(work: RunInference, *, source: str, index: int, piece: str) -> ChatDelta:
    """The `index`-th piece (from 0) of `work`'s streamed answer."""
    return ChatDelta(
        source=source,
        copro_id=work.copro_id,
        request_id=work.request_id,
        index=index,
        delta=piece,
    )
