"""Use case: apply one ledger event to the read models, exactly once.

The event's id is claimed in the same transaction as its effect, so a redelivered event
finds its id taken and changes nothing, and a failed one leaves no trace and can be
retried. Errors are the domain's: `NotYetProjectedError` (retry later) and
`InvalidEventError` (never storable).
"""

from __future__ import annotations

import enum
from typing import assert_never

from koprogo_ledger.domain.errors import RequestNotYetProjectedError, ResponseNotYetProjectedError
from koprogo_ledger.domain.records import (
    delivered_execution_info,
    failure_record,
    parse_id,
    request_row,
    response_row,
    settled_status,
)
from koprogo_ledger.service_layer.ports import ProjectionUnitOfWork
from koprogo_shared.events import ChatCompleted, ChatDelivered, ChatFailed, ChatRequested

LedgerEvent = ChatRequested | ChatCompleted | ChatFailed | ChatDelivered


class Projected(enum.Enum):
    """What applying an event did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already applied: a redelivery
    IGNORED = "ignored"  # recorded as applied, nothing to change (e.g. a second answer)


async def project(event: LedgerEvent, uow: ProjectionUnitOfWork) -> Projected:
    """Apply `event` in one transaction with its `applied_events` row."""
    async with uow:
        if not await uow.claim_event(event.id, event.type):
            return Projected.DUPLICATE
        outcome = await _apply(event, uow)
        await uow.commit()
        return outcome


async def _apply(event: LedgerEvent, uow: ProjectionUnitOfWork) -> Projected:
    match event:
        case ChatRequested():
            await uow.insert_request(request_row(event))
            return Projected.APPLIED
        case ChatCompleted():
            return await _apply_completed(event, uow)
        case ChatFailed():
            return await _apply_failed(event, uow)
        case ChatDelivered():
            return await _apply_delivered(event, uow)
        case _:
            assert_never(event)


async def _apply_completed(event: ChatCompleted, uow: ProjectionUnitOfWork) -> Projected:
    request_id = parse_id(event.request_id, "request id")
    request = await uow.lock_request(request_id)
    if request is None:
        raise RequestNotYetProjectedError(event.request_id)
    if not await uow.insert_response(response_row(event, request)):
        return Projected.IGNORED
    await uow.settle_request(request_id, settled_status(request.status, "completed"), None, event.time)
    return Projected.APPLIED


async def _apply_failed(event: ChatFailed, uow: ProjectionUnitOfWork) -> Projected:
    request_id = parse_id(event.request_id, "request id")
    request = await uow.lock_request(request_id)
    if request is None:
        raise RequestNotYetProjectedError(event.request_id)
    status = settled_status(request.status, "failed")
    await uow.settle_request(request_id, status, failure_record(event), event.time)
    return Projected.APPLIED


async def _apply_delivered(event: ChatDelivered, uow: ProjectionUnitOfWork) -> Projected:
    request_id = parse_id(event.request_id, "request id")
    request = await uow.lock_request(request_id)
    if request is None:
        raise RequestNotYetProjectedError(event.request_id)
    response = await uow.lock_response_of(request_id)
    if response is None:
        if request.status == "failed":
            # The caller was handed an error: there is no answer whose latency to correct.
            return Projected.IGNORED
        raise ResponseNotYetProjectedError(event.request_id)
    info = delivered_execution_info(response.execution_info, event.latency_ms)
    await uow.record_delivery(response.id, event.latency_ms, info)
    return Projected.APPLIED
