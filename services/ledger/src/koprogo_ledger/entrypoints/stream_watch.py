"""How full each KOPROGO stream is, for an alert before it refuses new messages (issue 12); how far
the ledger's own consumer is behind (`koprogo_ledger_lag_messages`, issue 16).

The streams refuse when full (`discard: new`): nothing stored is dropped, but every chat then
gets 503 bus_full. The ledger (its identity may look every stream up) sets
`koprogo_stream_fill_ratio` every `STREAM_WATCH_INTERVAL_S`; deploy/prometheus/alerts.yml
fires at 0.8. A stream it cannot read keeps its last value (and the failure is logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from koprogo_ledger.entrypoints.metrics import LAG, STREAM_FILL
from koprogo_shared.consumer import ConsumerSpec
from koprogo_shared.subjects import STREAMS

log = logging.getLogger(__name__)

STREAM_WATCH_INTERVAL_S = 15.0
LAG_WATCH_INTERVAL_S = 5.0


async def observe_streams(js: JetStreamContext) -> dict[str, float]:
    """Set each stream's fill ratio (bytes over max_bytes); the ratios set."""
    ratios: dict[str, float] = {}
    for spec in STREAMS:
        try:
            info = await js.stream_info(spec.name)
        except Exception as exc:
            log.warning("stream %s could not be looked up for its fill ratio: %r", spec.name, exc)
            continue
        limit = info.config.max_bytes
        if not limit or limit < 0:
            continue  # unlimited: only the disk bounds it
        ratios[spec.name] = (info.state.bytes or 0) / limit
        STREAM_FILL.labels(spec.name).set(ratios[spec.name])
    return ratios


async def watch_streams(
    js: JetStreamContext, stop: asyncio.Event, interval_s: float = STREAM_WATCH_INTERVAL_S
) -> None:
    """`observe_streams` now and every `interval_s` until `stop` is set."""
    while not stop.is_set():
        await observe_streams(js)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def watch_consumer_lag(
    js: JetStreamContext, spec: ConsumerSpec, stop: asyncio.Event, interval_s: float = LAG_WATCH_INTERVAL_S
) -> None:
    """Set the lag of the ledger's consumer now and every `interval_s` until `stop` is set: off the
    projection's path, one consumer lookup a round. A lookup that fails keeps the last value."""
    warned = False
    while not stop.is_set():
        try:
            info = await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            pass  # not created yet (the projection creates it as it starts)
        except Exception as exc:
            if not warned:  # said once, not every round
                log.warning("the ledger consumer's lag could not be read: %r", exc)
                warned = True
        else:
            LAG.set((info.num_pending or 0) + (info.num_ack_pending or 0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
