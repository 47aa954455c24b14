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
from koprogo_shared.work_items import WorkItemHandler, routed_work


def work_consumer(deployment_id: str, ack_wait_s: float, max_deliver: int, concurrency: int) -> ConsumerSpec:
    """The consumer every replica serving `deployment_id` binds to (same durable, same configuration)."""
    return ConsumerSpec(
        stream=subjects.WORK_STREAM,
        durable=subjects.cloud_work_durable(deployment_id),
        filter_subject=subjects.cloud_work_filter(deployment_id),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        batch=concurrency,  # at most this many a fetch, as many as its slots have free
        max_ack_pending=max(concurrency * 4, 16),
    )


def routed_consumer(
    deployment_id: str, ack_wait_s: float, max_deliver: int, concurrency: int
) -> ConsumerSpec:
    """The consumer every replica serving `deployment_id` binds to on the audit log: the requests
    gateways routed to it (`subjects.routed_chat_requested`), configured as `work_consumer`.

    Its durable, made with `deliver="new"`, never replays the audit log; it misses no request:
    the worker makes it before it sends a first status saying it takes them
    (`takes_routed_requests`), and a gateway routes to a deployment only while its status says
    so. (A durable an operator deletes misses what is stored until a worker makes it again:
    those callers get their 504 at their deadline, recorded by their gateway.)"""
    return ConsumerSpec(
        stream=subjects.EVENTS_STREAM,
        durable=subjects.routed_requests_durable(deployment_id),
        filter_subject=subjects.routed_requests_filter(deployment_id),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        batch=concurrency,  # at most this many a fetch, as many as its slots have free
        max_ack_pending=max(concurrency * 4, 16),
        deliver="new",
    )


def work_item_handler(
    service: CloudInferenceService,
    deployment_id: str,
    ack_wait_s: float,
    max_deliver: int,
    *,
    routed: bool = False,
) -> WorkItemHandler:
    """The shared handler over the use case, for the work of `deployment_id`: the router's work
    items, or (`routed`) the requests a gateway routed to it, each made into the same work item.
    The deployment's concurrency is its consumers' (`bootstrap`: they share its slots)."""
    return WorkItemHandler(
        partial(service.run, deployment_id),
        partial(service.report_failure, deployment_id),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        worker_name="the cloud worker",
        poison=(InvalidCommandError,),
        subject_check=copro_mismatch,
        decode=routed_work if routed else None,
        this_site_only=routed,
    )
