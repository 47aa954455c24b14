"""Thin NATS subscriber for work: RunInference items of one cloud deployment.

Every replica serving a deployment shares its durable pull consumer. The shared work-item
handler (`koprogo_shared.work_items`) keeps the item with this replica while a provider
call (and its retries) runs, dead-letters poison and tells the caller when the last
delivery fails.
"""

from __future__ import annotations

from functools import partial

from koprogo_cloud.domain.errors import InvalidCommandError
from koprogo_cloud.domain.work_subject import copro_mismatch
from koprogo_cloud.service_layer.inference import CloudInferenceService
from koprogo_shared import subjects
from koprogo_shared.consumer import ConsumerSpec
from koprogo_shared.work_items import WorkItemHandler


def work_consumer(deployment_id: str, ack_wait_s: float, max_deliver: int, concurrency: int) -> ConsumerSpec:
    """The consumer every replica serving `deployment_id` binds to (same durable, same configuration)."""
    return ConsumerSpec(
        stream=subjects.WORK_STREAM,
        durable=subjects.cloud_work_durable(deployment_id),
        filter_subject=subjects.cloud_work_filter(deployment_id),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        batch=1,
        max_ack_pending=max(concurrency * 4, 16),
    )


def work_item_handler(
    service: CloudInferenceService, deployment_id: str, ack_wait_s: float, max_deliver: int
) -> WorkItemHandler:
    """The shared handler over the use case, for the work of `deployment_id`."""
    return WorkItemHandler(
        partial(service.run, deployment_id),
        partial(service.report_failure, deployment_id),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        worker_name="the cloud worker",
        poison=(InvalidCommandError,),
        subject_check=copro_mismatch,
    )
