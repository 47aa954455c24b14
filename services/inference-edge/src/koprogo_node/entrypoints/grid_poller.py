"""The node's grid loop: ask the scheduler for work, run it, ask again.

A poll is a core NATS request (`subjects.grid_poll(node_id)`, its key may publish there alone) that
the scheduler holds until a task comes or `wait_s` passes. One task at a time: the model serves
chats too, and llama.cpp runs one generation at once. Cancels arrive on the node's own cancel
subject, as chat cancels do (the worker's `TaskCancels`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from koprogo_node.service_layer.grid_worker import GridWorker
from koprogo_shared import subjects
from koprogo_shared.task_events import GridPoll, GridPollReply
from koprogo_shared.telemetry import consumer_span

log = logging.getLogger(__name__)

POLL_WAIT_S = 5.0
# After a refused or failed poll: the scheduler may be starting, or may not have heard a heartbeat yet.
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0)


async def poll_for_tasks(nc: NATS, worker: GridWorker, stop: asyncio.Event) -> None:
    """Poll, run, report, until `stop`; the task in hand is finished first."""
    poll = GridPoll(node_id=worker.node_id, task_types=worker.task_types, wait_s=POLL_WAIT_S)  # type: ignore[arg-type]
    failures = 0
    log.info("node %s joined the grid for %s", worker.node_id, ", ".join(worker.task_types))
    while not stop.is_set():
        try:
            msg = await nc.request(
                subjects.grid_poll(worker.node_id),
                poll.model_dump_json().encode(),
                timeout=POLL_WAIT_S + 5,
            )
            reply = GridPollReply.model_validate_json(msg.data)
        except (
            TimeoutError,
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            ValidationError,
        ) as exc:
            failures += 1
            if failures in (1, 10):
                log.warning("grid poll failed (%r); polling again", exc)
            await _pause(stop, RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1])
            continue
        except nats.errors.ConnectionClosedError:
            return
        if reply.assignment is None:
            if reply.reason != "no_work":
                failures += 1
                if failures in (1, 10):
                    log.warning("the scheduler refused this node's poll: %s", reply.reason)
                await _pause(stop, RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1])
            continue
        failures = 0
        try:
            # In the task's trace (the scheduler's answer carries it): the run and the
            # reports it publishes show under the gateway's /mcp/v1/execute.
            with consumer_span(msg, "grid run") as span:
                span.set_attribute("koprogo.node_id", worker.node_id)
                span.set_attribute("koprogo.task_type", reply.assignment.task_type)
                span.set_attribute("koprogo.attempt", reply.assignment.attempt)
                await worker.run(reply.assignment)
        except Exception:
            # The report could not be stored: the scheduler takes the attempt back at its deadline.
            log.exception("task %s: report not stored", reply.assignment.task_id)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
