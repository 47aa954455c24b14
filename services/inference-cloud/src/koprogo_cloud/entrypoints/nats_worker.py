"""Thin NATS subscriber for work: RunInference items of one cloud deployment.

Every replica serving a deployment shares its durable pull consumer. While a provider
call (and its retries) runs, in-progress acks keep the item; if the worker dies, the
server hands it to another replica `ack_wait` after the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg

from koprogo_cloud.domain.errors import InvalidCommandError
from koprogo_cloud.service_layer.inference import CloudInferenceService
from koprogo_shared import subjects
from koprogo_shared.consumer import ConsumerSpec, PoisonMessageError, keep_alive_interval
from koprogo_shared.events import RunInference

log = logging.getLogger(__name__)


def work_consumer(deployment_id: str, ack_wait_s: float, max_deliver: int, concurrency: int) -> ConsumerSpec:
    """The consumer every replica serving `deployment_id` binds to (same durable, same configuration)."""
    return ConsumerSpec(
        stream=subjects.WORK_STREAM,
        durable=subjects.cloud_work_durable(deployment_id),
        filter_subject=subjects.run_inference_cloud(deployment_id),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        batch=1,
        max_ack_pending=max(concurrency * 4, 16),
    )


class CloudWorkWorker:
    """Decodes a work item, keeps its ack deadline alive, and hands it to the service."""

    def __init__(
        self, service: CloudInferenceService, deployment_id: str, ack_wait_s: float, max_deliver: int
    ) -> None:
        self._service = service
        self._deployment_id = deployment_id
        self._keep_alive_s = keep_alive_interval(ack_wait_s)
        self._max_deliver = max_deliver

    async def handle(self, msg: Msg) -> None:
        """Return to ack; raise to NAK (or dead-letter on the last delivery), as the shared consumer does."""
        work = RunInference.model_validate_json(msg.data)  # malformed -> dead-lettered by the consumer
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        try:
            await self._service.run(self._deployment_id, work)
        except InvalidCommandError as exc:
            raise PoisonMessageError(str(exc)) from None
        except Exception as exc:
            if msg.metadata.num_delivered >= self._max_deliver:
                # The consumer dead-letters this item now; the caller must not wait for nothing.
                log.error("request %s failed on its last delivery: %s", work.request_id, type(exc).__name__)
                with contextlib.suppress(Exception):
                    await self._service.report_failure(
                        self._deployment_id,
                        work,
                        f"the cloud worker could not answer after {self._max_deliver} attempts",
                    )
            raise
        finally:
            keep_alive.cancel()

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._keep_alive_s)
            try:
                await msg.in_progress()
            except Exception as exc:  # a lost in-progress ack only risks a redelivery
                log.debug("in-progress ack failed: %r", exc)
