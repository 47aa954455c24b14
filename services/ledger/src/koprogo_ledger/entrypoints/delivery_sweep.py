"""The ledger's sweep of undelivered answers (`service_layer.deliveries`), every few seconds.

It runs only while the ledger is caught up with the event stream: a ChatDelivered still waiting
there must be projected before its answer is judged undelivered. A failed round is logged and
tried again at the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from koprogo_ledger.entrypoints.metrics import UNDELIVERED_SETTLED
from koprogo_ledger.service_layer.deliveries import settle_undelivered
from koprogo_ledger.service_layer.ports import UndeliveredAnswers
from koprogo_ledger.settings import LedgerSettings

log = logging.getLogger(__name__)


async def run_delivery_sweep(
    answers: UndeliveredAnswers,
    caught_up: Callable[[], Awaitable[bool]],
    settings: LedgerSettings,
    stop: asyncio.Event,
) -> None:
    """A sweep every `settings.ledger_sweep_interval_s` (0: never) until `stop` is set."""
    interval = settings.ledger_sweep_interval_s
    if interval <= 0:
        return
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        try:
            if not await caught_up():
                continue
            settled = await settle_undelivered(
                answers,
                now=datetime.now(UTC),
                grace_s=settings.ledger_undelivered_grace_s,
                batch=settings.contents_batch,
            )
        except Exception as exc:
            log.warning("the sweep of undelivered answers failed, tried again later: %r", exc)
            continue
        if settled:
            UNDELIVERED_SETTLED.inc(settled)
            log.warning("%d answer(s) handed to no caller by their deadline: settled as failed", settled)
