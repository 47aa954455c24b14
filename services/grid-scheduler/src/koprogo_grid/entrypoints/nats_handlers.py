"""The scheduler's NATS entrypoints: each translates a message and makes one service-layer call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from nats.aio.msg import Msg
from prometheus_client import Counter
from pydantic import ValidationError

from koprogo_grid.domain.nodes import PollingNode
from koprogo_grid.domain.task_state import NodeFootprint
from koprogo_grid.service_layer.scheduler import GridScheduler
from koprogo_shared import subjects
from koprogo_shared.decisions import PoisonMessageError
from koprogo_shared.events import NodeHeartbeat
from koprogo_shared.node_registry import NodeRegistry, heartbeat_refusal
from koprogo_shared.node_roster import Roster
from koprogo_shared.task_events import (
    GridPoll,
    GridPollReply,
    TaskCancelRequested,
    TaskResultReported,
    TaskStarted,
    TaskSubmitted,
    task_event_adapter,
)

log = logging.getLogger(__name__)

POLLS_REFUSED = Counter(
    "koprogo_grid_polls_refused_total", "Grid polls not believed or not answerable", ["reason"]
)


class KeyCheckingRegistry(NodeRegistry):
    """The node registry of the scheduler: a heartbeat is also checked for the public key it
    announces (`GridScheduler.heard_key`: the roster's, or the one pinned at its first heartbeat)."""

    def __init__(
        self, roster: Callable[[], Roster | None], heard_key: Callable[[str, str | None], str | None]
    ) -> None:
        super().__init__(roster)
        self._roster_of = roster
        self._heard_key = heard_key

    def heard(self, subject: str, beat: NodeHeartbeat, now: float) -> str | None:
        refusal = heartbeat_refusal(subject, beat, self._roster_of())
        if refusal is None and not beat.leaving:
            refusal = self._heard_key(beat.node_id, beat.public_key)
        if refusal is not None:
            return refusal
        return super().heard(subject, beat, now)


async def on_task_event(
    scheduler: GridScheduler, msg: Msg, remember_trace: Callable[[str], None] | None = None
) -> None:
    """KOPROGO_EVENTS `koprogo.events.task.>`: submissions, cancels, node reports (its own events pass).

    `remember_trace`: called with a submitted task's id in its message's trace, which its
    assignment then continues (`adapters.bus.NatsPollAnswers`).
    """
    try:
        event = task_event_adapter.validate_json(msg.data)
    except ValidationError as exc:
        raise PoisonMessageError(f"not a task event: {exc.error_count()} errors") from None
    if isinstance(event, TaskSubmitted):
        if remember_trace is not None:
            remember_trace(event.id)
        await scheduler.on_submitted(event)
    elif isinstance(event, TaskCancelRequested):
        await scheduler.on_cancel_requested(event)
    elif isinstance(event, TaskStarted):
        await scheduler.on_started(event, msg.subject)
    elif isinstance(event, TaskResultReported):
        await scheduler.on_reported(event, msg.subject)
    # The scheduler's own decisions come back on the same subjects: nothing to do.


async def on_poll(scheduler: GridScheduler, registry: NodeRegistry, msg: Msg) -> None:
    """`koprogo.grid.poll.<node>`: a node asks for work; answered now or when a task comes."""

    async def refuse(reason: str) -> None:
        POLLS_REFUSED.labels(reason).inc()
        if msg.reply:
            await msg.respond(GridPollReply(reason=reason).model_dump_json().encode())

    try:
        poll = GridPoll.model_validate_json(msg.data)
    except ValidationError:
        await refuse("malformed")
        return
    if subjects.poll_sender(msg.subject) != subjects.subject_token(poll.node_id):
        await refuse("node_id_not_its_subject")
        return
    beat = registry.node(poll.node_id, time.monotonic())
    if beat is None:
        await refuse("no_heartbeat")  # the node heartbeats first, then polls
        return
    task_types = frozenset(poll.task_types) & beat.task_types
    if not task_types:
        await refuse("task_types_not_announced")
        return
    if scheduler.node_key(poll.node_id) is None:
        # Neither the roster nor its heartbeats gave a key: every report it signed would be refused.
        await refuse("no_public_key")
        return
    node = PollingNode(
        node_id=poll.node_id,
        task_types=task_types,
        pools=beat.pools,
        footprint=NodeFootprint(
            power_watts=beat.power_watts,
            intensity_g_per_kwh=beat.intensity_g_per_kwh,
            renewable_attested=beat.renewable_attested,
        ),
    )
    await scheduler.poll(node, msg.reply, poll.wait_s)
