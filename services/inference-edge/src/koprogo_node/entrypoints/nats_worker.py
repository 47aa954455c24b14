"""Thin NATS subscriber for work: RunInference items of this node's model, one at a time.

All nodes serving a model share one durable pull consumer, so they share the load: a
node fetches the next item only when it is idle. While generating it sends in-progress
acks, so the item stays with it; if the node dies, the server hands the item to another
node `ack_wait` after the last in-progress ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg

from koprogo_node.adapters import metrics
from koprogo_node.domain.errors import InvalidCommandError
from koprogo_node.service_layer.inference import InferenceService
from koprogo_shared import subjects
from koprogo_shared.consumer import ConsumerSpec, PoisonMessageError, keep_alive_interval
from koprogo_shared.events import ChatCompleted, RunInference

log = logging.getLogger(__name__)


def work_consumer(model_id: str, ack_wait_s: float, max_deliver: int) -> ConsumerSpec:
    """The consumer every node serving `model_id` binds to (same durable, same configuration)."""
    return ConsumerSpec(
        stream=subjects.WORK_STREAM,
        durable=subjects.edge_work_durable(model_id),
        filter_subject=subjects.run_inference_edge(model_id),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        batch=1,
    )


class RunInferenceWorker:
    """Decodes a work item, keeps its ack deadline alive, and hands it to the service."""

    def __init__(self, service: InferenceService, ack_wait_s: float, max_deliver: int) -> None:
        self._service = service
        self._keep_alive_s = keep_alive_interval(ack_wait_s)
        self._max_deliver = max_deliver
        self._model = service.node.model_id

    async def handle(self, msg: Msg) -> None:
        """Return to ack; raise to NAK (or dead-letter on the last delivery), as the shared consumer does."""
        cmd = RunInference.model_validate_json(msg.data)  # malformed -> dead-lettered by the consumer
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        try:
            outcome = await self._service.run(cmd)
        except InvalidCommandError as exc:
            metrics.REQUESTS.labels(self._model, "invalid").inc()
            raise PoisonMessageError(str(exc)) from None
        except Exception as exc:
            metrics.REQUESTS.labels(self._model, "error").inc()
            if msg.metadata.num_delivered >= self._max_deliver:
                # The consumer dead-letters this item now; the caller must not wait for nothing.
                await self._report_final_failure(cmd, exc)
            raise
        finally:
            keep_alive.cancel()
        if isinstance(outcome, ChatCompleted):
            metrics.REQUESTS.labels(self._model, "completed").inc()
            metrics.TOKENS.labels(self._model, "prompt").inc(outcome.usage.prompt_tokens)
            metrics.TOKENS.labels(self._model, "completion").inc(outcome.usage.completion_tokens)
            metrics.INFERENCE_SECONDS.labels(self._model).observe(outcome.execution_info.latency_ms / 1000.0)
        else:
            metrics.REQUESTS.labels(self._model, f"failed_{outcome.status}").inc()

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._keep_alive_s)
            try:
                await msg.in_progress()
            except Exception as exc:  # a lost in-progress ack only risks a redelivery
                log.debug("in-progress ack failed: %r", exc)

    async def _report_final_failure(self, cmd: RunInference, exc: Exception) -> None:
        log.error("request %s failed on its last delivery: %s", cmd.request_id, type(exc).__name__)
        with contextlib.suppress(Exception):
            await self._service.report_failure(
                cmd,
                500,
                "inference_failed",
                f"the edge node could not answer after {self._max_deliver} attempts",
            )
