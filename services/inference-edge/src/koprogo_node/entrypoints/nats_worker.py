"""Thin NATS subscriber for work: RunInference items of this node's model, one at a time.

All nodes of one pool serving a model share one durable pull consumer, so they share the
load: a node fetches the next item only when it is idle. A node takes the work of its own
pools alone (the shared one, or its copros'), as its NATS key allows. A node of the shared pool
that joined the grid also takes the grid's chat work for its model (`grid_work_consumer`), with
the same handler. A node also takes the requests a gateway routed itself to its pools and model,
on the audit log (`routed_consumer`), made into the same work items. The shared work-item handler
(`koprogo_shared.work_items`) keeps the item with this node while it generates, dead-letters
poison and tells the caller when the last delivery fails; this module adds the node's
request and token counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from nats.js import JetStreamContext

from koprogo_node.adapters import metrics
from koprogo_node.domain.errors import InvalidCommandError
from koprogo_node.service_layer.inference import InferenceService
from koprogo_shared import subjects
from koprogo_shared.consumer import ConsumerSpec, Handler, run_pull_consumer
from koprogo_shared.durables import declare_consumer
from koprogo_shared.events import ChatCompleted, ChatFailed, RunInference
from koprogo_shared.work_items import WorkItemHandler, routed_copro_mismatch, routed_work

log = logging.getLogger(__name__)


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


def routed_consumer(
    model_id: str, ack_wait_s: float, max_deliver: int, pool: str = subjects.SHARED_POOL
) -> ConsumerSpec:
    """The consumer every node of `pool` serving `model_id` binds to on the audit log: the requests
    gateways routed to them (`subjects.routed_edge_chat_requested`), configured as `work_consumer`.

    As the cloud workers' (`koprogo_cloud`'s `routed_consumer`): made with `deliver="new"`, it never
    replays the audit log, and misses no request: the node makes it before a heartbeat says it
    takes them (`NodeHeartbeat.takes_routed_requests`), and a gateway routes to a pool and model
    only while every alive node of them says so."""
    return ConsumerSpec(
        stream=subjects.EVENTS_STREAM,
        durable=subjects.routed_edge_requests_durable(model_id, pool),
        filter_subject=subjects.routed_edge_requests_filter(model_id, pool),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        batch=1,
        deliver="new",
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


class OneAtATime:
    """A node's items one at a time across its consumers (its pools' work, the grid's, the routed
    requests): each consumer loop fetches only while the node is `free` (`run_pull_consumer`'s
    `ready`), so an item waits at the server, where an idle node of its pool may take it, not here
    behind a generation. Each item runs in its `turn`; two items fetched at the same instant (or
    one by a long poll already waiting when the node became busy, for at most its second) take
    turns, the waiting one kept alive with in-progress acks (`WorkItemHandler`)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._free = asyncio.Event()
        self._free.set()
        self._wanted = 0  # items running or waiting for their turn

    async def free(self) -> None:
        await self._free.wait()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        self._wanted += 1
        self._free.clear()
        try:
            async with self._lock:
                yield
        finally:
            # Free only once no item runs or waits: the next one's turn is not a free moment.
            self._wanted -= 1
            if self._wanted == 0:
                self._free.set()


def work_item_handler(
    service: InferenceService,
    ack_wait_s: float,
    max_deliver: int,
    *,
    routed: bool = False,
    turns: OneAtATime | None = None,
) -> WorkItemHandler:
    """The shared handler over this node's use case, counting what came of each item: the router's
    work items, or (`routed`) the requests a gateway routed to the node's pools, each made into the
    same work item (a request whose subject names another copro than its body is dead-lettered).
    `turns`: shared by the node's handlers when it has several consumers."""
    model = service.node.model_id

    async def run_counted(cmd: RunInference, *, redelivered: bool) -> None:
        async with turns.turn() if turns is not None else contextlib.nullcontext():
            await _run_counted(cmd)

    async def _run_counted(cmd: RunInference) -> None:
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
        subject_check=routed_copro_mismatch if routed else None,
        decode=routed_work if routed else None,
        this_site_only=routed,
    )


def _count(model: str, outcome: ChatCompleted | ChatFailed) -> None:
    if isinstance(outcome, ChatCompleted):
        metrics.REQUESTS.labels(model, "completed").inc()
        metrics.TOKENS.labels(model, "prompt").inc(outcome.usage.prompt_tokens)
        metrics.TOKENS.labels(model, "completion").inc(outcome.usage.completion_tokens)
        metrics.INFERENCE_SECONDS.labels(model).observe(outcome.execution_info.latency_ms / 1000.0)
    else:
        metrics.REQUESTS.labels(model, f"failed_{outcome.status}").inc()


async def declare_routed(js: JetStreamContext, specs: Sequence[ConsumerSpec]) -> list[ConsumerSpec]:
    """The consumers of routed requests, declared; none when one cannot be (then the node says it
    does not take routed requests, and gets every chat from the router's work items as before).

    A hub whose NATS permissions predate them (an older release's, or a node key's grants written
    before) refuses the node that durable: its request gets no answer, a timeout after the
    JetStream API's wait."""
    try:
        for spec in specs:
            await declare_consumer(js, spec)
    except Exception as exc:
        log.warning(
            "this node takes no requests routed by the gateways (%r: its hub's NATS permissions may "
            "predate them); it takes the router's work items only",
            exc,
        )
        return []
    return list(specs)


async def consume(
    js: JetStreamContext,
    consumers: Sequence[tuple[ConsumerSpec, Handler]],
    turns: OneAtATime,
    stop: asyncio.Event,
) -> None:
    """One pull consumer per pool, kind of work and routed requests; the node runs one item at a
    time (`OneAtATime`: each fetches only while the node is free)."""
    async with asyncio.TaskGroup() as loops:
        for spec, handle in consumers:
            loops.create_task(run_pull_consumer(js, spec, handle, stop, ready=turns.free))
