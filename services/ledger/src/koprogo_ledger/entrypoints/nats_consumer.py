"""The NATS side of the ledger: decode each KOPROGO_EVENTS message, project it, decide its fate.

Decisions (taken by `koprogo_shared.consumer`): the handler returns -> ack (after the
commit); a payload that is not a known ledger event, or an event PostgreSQL can never
store -> dead-letter; an event whose predecessor is not applied yet -> NAK with back-off,
dead-lettered after `max_deliver` deliveries. While PostgreSQL is unreachable the handler
holds the message (telling JetStream it is in progress) instead of spending its
deliveries: a database restart must not dead-letter the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.msg import Msg
from pydantic import ValidationError

from koprogo_ledger.domain.errors import InvalidEventError, StoreUnavailableError
from koprogo_ledger.entrypoints.metrics import APPLY_SECONDS, EVENTS, FAILURES
from koprogo_ledger.service_layer.ports import UnitOfWorkFactory
from koprogo_ledger.service_layer.projection import LedgerEvent, Projected, project
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared.consumer import ConsumerSpec, Handler, PoisonMessageError
from koprogo_shared.events import ledger_event_adapter
from koprogo_shared.subjects import EVENTS_ALL, EVENTS_STREAM

log = logging.getLogger(__name__)

HOLD_FIRST_WAIT_S = 0.5
HOLD_MAX_WAIT_S = 5.0  # well under the ack wait, so `in_progress` keeps the message ours


def ledger_consumer_spec(settings: LedgerSettings) -> ConsumerSpec:
    """The durable pull consumer over every fact in KOPROGO_EVENTS."""
    return ConsumerSpec(
        stream=EVENTS_STREAM,
        durable=settings.ledger_durable,
        filter_subject=EVENTS_ALL,
        ack_wait_s=settings.ledger_ack_wait_s,
        max_deliver=settings.ledger_max_deliver,
        batch=settings.ledger_batch,
    )


def event_handler(unit_of_work: UnitOfWorkFactory, stop: asyncio.Event) -> Handler:
    """The message handler; no per-message logging (hot path), outcomes and failures are counted."""

    async def handle(msg: Msg) -> None:
        try:
            event = ledger_event_adapter.validate_json(msg.data)
        except ValidationError:
            FAILURES.labels("poison").inc()
            raise
        started = time.perf_counter()
        try:
            outcome = await _project_holding_while_unavailable(event, unit_of_work, msg, stop)
        except InvalidEventError as exc:
            FAILURES.labels("poison").inc()
            raise PoisonMessageError(f"event {event.id} ({event.type}): {exc}") from None
        except Exception:
            FAILURES.labels("transient").inc()
            raise
        APPLY_SECONDS.observe(time.perf_counter() - started)
        EVENTS.labels(event.type, outcome.value).inc()

    return handle


async def _project_holding_while_unavailable(
    event: LedgerEvent, unit_of_work: UnitOfWorkFactory, msg: Msg, stop: asyncio.Event
) -> Projected:
    wait = HOLD_FIRST_WAIT_S
    held = False
    while True:
        try:
            outcome = await project(event, unit_of_work())
        except StoreUnavailableError as exc:
            if stop.is_set():
                raise  # NAK: whoever consumes next applies it
            if not held:
                log.warning("holding event %s: %s", event.id, exc)
                held = True
            FAILURES.labels("unavailable").inc()
            await msg.in_progress()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            wait = min(wait * 2, HOLD_MAX_WAIT_S)
            continue
        if held:
            log.info("PostgreSQL is back; event %s applied", event.id)
        return outcome
