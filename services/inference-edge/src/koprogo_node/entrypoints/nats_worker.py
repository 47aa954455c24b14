"""Thin NATS subscriber for work: RunInference items of this node's model, one at a time.

All nodes of one pool serving a model share one durable pull consumer, so they share the
load: a node fetches the next item only when it is idle. A node takes the work of its own
pools alone (the shared one, or its copros'), as its NATS key allows. A node of the shared pool
that joined the grid also takes the grid's chat work for its model (`grid_work_consumer`), with
the same handler. The shared work-item handler
(`koprogo_shared.work_items`) keeps the item with this node while it generates, dead-letters
poison and tells the caller when the last delivery fails; this module adds the node's
request and token counters.
"""

from __future__ import annotations

from koprogo_node.adapters import metrics
from koprogo_node.domain.errors import InvalidCommandError
from koprogo_node.service_layer.inference import InferenceService
from koprogo_shared import subjects
from koprogo_shared.consumer import ConsumerSpec
from koprogo_shared.events import ChatCompleted, ChatFailed, RunInference
from koprogo_shared.work_items import WorkItemHandler


def work_consumer(
    model_id: str, ack_wait_s: float, max_deliver: int, pool: str = subjects.SHARED_POOL
) -> ConsumerSpec:
    """The consumer every node of `pool` serving `model_id` binds to (same durable, same configuration)."""
    return ConsumerSpec(
        stream=subjects.WORK_STREAM,
        durable=subjects.edge_work_durable(model_id, pool),
        filter_subject=subjects.run_inference_edge(model_id, pool),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        batch=1,
    )


def grid_work_consumer(model_id: str, ack_wait_s: float, max_deliver: int) -> ConsumerSpec:
    """The consumer every grid node serving `model_id` binds to: the long chats the router sends
    to the grid (`subjects.run_inference_grid`)."""
    return ConsumerSpec(
        stream=subjects.WORK_STREAM,
        durable=subjects.grid_work_durable(model_id),
        filter_subject=subjects.run_inference_grid(model_id),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        batch=1,
    )


def work_item_handler(service: InferenceService, ack_wait_s: float, max_deliver: int) -> WorkItemHandler:
    """The shared handler over this node's use case, counting what came of each item."""
    model = service.node.model_id

    async def run_counted(cmd: RunInference, *, redelivered: bool) -> None:
        # The node looks up every item's stored answer (in its own memory), delivered before or not.
        try:
            outcome = await service.run(cmd)
        except InvalidCommandError:
            metrics.REQUESTS.labels(model, "invalid").inc()
            raise
        except Exception:
            metrics.REQUESTS.labels(model, "error").inc()
            raise
        _count(model, outcome)

    return WorkItemHandler(
        run_counted,
        service.report_failure,
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        worker_name="the edge node",
        poison=(InvalidCommandError,),
    )


def _count(model: str, outcome: ChatCompleted | ChatFailed) -> None:
    if isinstance(outcome, ChatCompleted):
        metrics.REQUESTS.labels(model, "completed").inc()
        metrics.TOKENS.labels(model, "prompt").inc(outcome.usage.prompt_tokens)
        metrics.TOKENS.labels(model, "completion").inc(outcome.usage.completion_tokens)
        metrics.INFERENCE_SECONDS.labels(model).observe(outcome.execution_info.latency_ms / 1000.0)
    else:
        metrics.REQUESTS.labels(model, f"failed_{outcome.status}").inc()
