"""The grid scheduler's use cases: take tasks, hand signed replicas to polling nodes, verify reports.

Every transition is stored (`TaskStateStore`) before its events are published and before a node
is answered, so a scheduler that dies at any point restarts from its store: a task stored as
assigned whose node never heard of it is taken back when `start_grace_s` passes; events stored in
a state's outbox but not published are published again at start (their ids are deterministic).
Transitions of one task are serialised (a lock per task); different tasks go concurrently.

Trust (docs/grid-trust.md): each assignment is signed with the scheduler's key and its digest kept
in the replica; a report is believed only when `grid_signing.report_refusal` finds nothing (signed
by the node's key, from the roster or pinned from its first heartbeat, naming the assignment it
was given, its result unaltered). A result's agreement key (`domain.comparators`) and its energy
attestation's flags (`domain.green`) go to the board, which decides; the judgments of nodes go to
the trust book, whose standings are stored (`NodeStandingStore`) before the task's state and
published after it.

Owners available (`TaskBoard.shortfall`): `live_nodes` gives the nodes alive now (from heartbeats:
node id, task types, pools), each given its owner from the roster (else its node id). When no
owner not already on a task can run it, its agreeing results are taken unchecked; this is looked
at when a result comes and at each tick. Without `live_nodes` (None) a quorum is always waited for.

`GridScheduler` holds the use cases (events from the stream, polls, the tick); the nodes' owners,
keys and liveness are its `node_keys.NodeKeys` part; storing, publishing and forgetting a final
task's contents its `task_records.TaskRecords` part.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from koprogo_grid.domain.board import TaskBoard
from koprogo_grid.domain.comparators import agreement_key
from koprogo_grid.domain.green import attestation_flags
from koprogo_grid.domain.nodes import PollingNode
from koprogo_grid.domain.task_state import ReportCheck, Step, TaskState
from koprogo_grid.domain.trust import NodeStanding, TrustBook
from koprogo_grid.domain.waiting_nodes import Waiter
from koprogo_grid.service_layer.node_keys import LiveNodes, NodeKeys
from koprogo_grid.service_layer.ports import NodeStandingStore, TaskDocumentBin, TaskEventBus, TaskStateStore
from koprogo_grid.service_layer.task_records import CancelNode, TaskRecords
from koprogo_shared import subjects
from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.events import utc_now
from koprogo_shared.grid_signing import (
    Signer,
    assignment_digest,
    report_refusal,
    result_digest,
    sign_assignment,
)
from koprogo_shared.node_roster import DeviceProfile, Roster
from koprogo_shared.task_events import (
    GridPollReply,
    TaskCancelRequested,
    TaskResultReported,
    TaskStarted,
    TaskSubmitted,
)

log = logging.getLogger(__name__)

Respond = Callable[[Any, GridPollReply], Awaitable[None]]
AgreementKey = Callable[[str, Mapping[str, Any]], str]
AttestationFlags = Callable[..., list[str]]


class GridScheduler(NodeKeys, TaskRecords):
    def __init__(
        self,
        board: TaskBoard,
        store: TaskStateStore,
        bus: TaskEventBus,
        respond: Respond,
        cancel_node: CancelNode,
        documents: TaskDocumentBin | None = None,
        *,
        signer: Signer,
        trust: TrustBook,
        standings: NodeStandingStore,
        roster: Callable[[], Roster | None] = lambda: None,
        salt: bytes | None = None,
        comparator: AgreementKey = agreement_key,
        green: AttestationFlags = attestation_flags,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        live_nodes: LiveNodes | None = None,
    ) -> None:
        self.board = board
        self.trust = trust
        self._store = store
        self._standings = standings
        self._bus = bus
        self._respond = respond
        self._cancel_node = cancel_node
        self._documents = documents
        self._signer = signer
        self._roster = roster
        self._salt = salt
        self._comparator = comparator
        self._green = green
        self._clock = clock
        self._monotonic = monotonic
        # (node id, task types, pools) of each node alive now; set by the bootstrap once its node
        # registry exists (None: not known, and no task is ever taken without its quorum).
        self.live_nodes = live_nodes
        # Nodes announce themselves after a (re)start: until `owner_wait_s` passed, who is alive
        # is not known yet.
        self._started_mono = monotonic()
        self._locks: dict[str, asyncio.Lock] = {}
        self._unpublished: dict[str, TaskState] = {}
        self._unpublished_trust: dict[str, NodeStanding] = {}
        self._unsaved_keys: dict[str, NodeStanding] = {}
        self._saving: set[asyncio.Task[None]] = set()
        self._trust_lock = asyncio.Lock()
        # Trusted nodes just caught wrong, and when: their unchecked results are re-checked.
        self._to_recheck: list[tuple[str, datetime]] = []
        self.dispatched = 0
        self.refused_reports = 0
        self.rechecks = 0
        # For the ops port's metrics: decided tasks by verification outcome, refused reports by
        # reason, trust changes by reason.
        self.outcomes: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.trust_changes: Counter[str] = Counter()
        # Tasks short of owners for their quorum, by what was done: accepted_unchecked,
        # awaiting_owner (results disagree), unverifiable (at expiry).
        self.owners_short: Counter[str] = Counter()

    @property
    def public_key(self) -> str:
        return self._signer.public_key

    async def start(self) -> None:
        """Rebuild the board and the trust book from the stores, publish what a previous run may not have."""
        self._started_mono = self._monotonic()
        self.board.salt = self._salt if self._salt is not None else await self._standings.salt()
        standings = await self._standings.load()
        self.trust.load(standings)
        for standing in standings:
            if standing.outbox:
                self._unpublished_trust[standing.node_id] = standing
        states = await self._store.load()
        self.board.load(states)
        for state in states:
            if state.outbox:
                self._unpublished[state.task_id] = state
        await self._publish_pending()
        log.info(
            "grid scheduler loaded %d tasks %s and %d nodes (%d trusted); it signs as %s",
            len(states),
            self.board.counts(),
            len(standings),
            sum(1 for s in standings if s.trusted),
            self._signer.public_key,
        )

    def _lock(self, task_id: str) -> asyncio.Lock:
        lock = self._locks.get(task_id)
        if lock is None:
            lock = self._locks[task_id] = asyncio.Lock()
        return lock

    # ----- events from the stream ------------------------------------------------------------

    async def on_submitted(self, task: TaskSubmitted) -> None:
        async with self._lock(task.id):
            step = self.board.submitted(task, self._clock())
            if step is None:
                return  # known: a redelivered submission
            await self._apply(step)
        if step.state.status == "pending":
            await self._offer()

    async def on_cancel_requested(self, request: TaskCancelRequested) -> None:
        async with self._lock(request.task_id):
            state = self.board.get(request.task_id)
            if state is None or state.task.copro_id != request.copro_id:
                return  # unknown here (final and forgotten, or another copro's id): nothing to cancel
            step = self.board.cancel(state, self._clock())
            if step is None:
                return
            await self._apply(step)

    async def on_started(self, event: TaskStarted, subject: str) -> None:
        if not self._from_its_node(subject, event.node_id):
            return
        async with self._lock(event.task_id):
            state = self.board.get(event.task_id)
            step = None if state is None else self.board.started(state, event, self._clock())
            if step is None:
                self.refused_reports += 1
                log.info(
                    "ignoring a start of task %s attempt %d from %s",
                    event.task_id,
                    event.attempt,
                    event.node_id,
                )
                return
            await self._apply(step)

    async def on_reported(self, report: TaskResultReported, subject: str) -> None:
        if not self._from_its_node(subject, report.node_id):
            return
        async with self._lock(report.task_id):
            state = self.board.get(report.task_id)
            replica = None if state is None else self.board.current(state, report.node_id, report.attempt)
            if state is None or replica is None:
                self.refused_reports += 1
                log.info(
                    "ignoring a report of task %s attempt %d from %s (not an open replica)",
                    report.task_id,
                    report.attempt,
                    report.node_id,
                )
                return
            now = self._clock()
            expected = replica.assignment_digest or report.assignment_digest or ""
            refusal = report_refusal(report, self.node_key(report.node_id), expected)
            trusted = self.trust.is_trusted(report.node_id)
            if refusal is not None:
                self.refusals[refusal] += 1
                log.warning(
                    "refused the report of task %s attempt %d from %s: %s",
                    report.task_id,
                    report.attempt,
                    report.node_id,
                    refusal,
                )
                check = ReportCheck(refusal=refusal, trusted=trusted)
            elif report.outcome == "completed" and report.result is not None:
                grant = self._grant(report.node_id)
                footprint = (
                    grant.footprint
                    if grant is not None
                    else (replica.footprint.edge() if replica.footprint is not None else EdgeFootprint())
                )
                flags = self._green(
                    report.attestation,
                    task_type=state.task.task_type,
                    usage=report.usage,
                    device=grant.device if grant is not None else DeviceProfile(),
                    footprint=footprint,
                    at=now,
                )
                check = ReportCheck(
                    agreement_key=self._key(state.task.task_type, report.result),
                    flags=tuple(flags),
                    trusted=trusted,
                )
            else:
                check = ReportCheck(trusted=trusted)
            step = self.board.reported(state, report, check, now, self.live())
            if step is None:  # not reachable: `current` was checked under the lock
                return
            await self._apply(step)
        await self._run_rechecks()
        if self.board.wanted(step.state) > 0:
            await self._offer()

    def _key(self, task_type: str, result: Mapping[str, Any]) -> str:
        try:
            return self._comparator(task_type, result)
        except Exception as exc:
            # A result the comparator cannot read agrees with nothing but an identical result.
            # The error's type only: its text can quote the result (a document's amounts, names).
            log.warning(
                "the %s comparator cannot read a result (%s): compared as its digest",
                task_type,
                type(exc).__name__,
            )
            return f"unreadable:{result_digest(result)}"

    def _from_its_node(self, subject: str, node_id: str) -> bool:
        if subjects.task_sender(subject) != subjects.subject_token(node_id):
            self.refused_reports += 1
            log.warning("refused a task report for node %r heard on %s", node_id, subject)
            return False
        return True

    # ----- polls -------------------------------------------------------------------------------

    async def poll(self, node: PollingNode, reply: Any, wait_s: float) -> None:
        """Answer `reply` with the oldest task `node` may run, at once or when one comes within `wait_s`."""
        node = dataclasses.replace(
            node, owner=self.owner_of(node.node_id), trusted=self.trust.is_trusted(node.node_id)
        )
        assigned = await self._try_assign(node, reply)
        if assigned is not None:
            if self.board.wanted(assigned) > 0:
                await self._offer()  # its other replicas may go to nodes already waiting
            return
        if wait_s <= 0:
            await self._respond(reply, GridPollReply(reason="no_work"))
            return
        previous = self.board.wait(Waiter(node, reply, self._monotonic() + wait_s))
        if previous is not None:
            await self._respond(previous.reply, GridPollReply(reason="no_work"))
        # A task may have been queued between the look above and the wait: offer again.
        await self._offer()

    async def _try_assign(self, node: PollingNode, reply: Any) -> TaskState | None:
        """Hand `node` a replica of the oldest task it fits and answer `reply`; the task's new state."""
        now = self._clock()
        # The standing may have changed while the node waited.
        node = dataclasses.replace(node, trusted=self.trust.is_trusted(node.node_id))
        while (state := self.board.next_task(node, now)) is not None:
            async with self._lock(state.task_id):
                current = self.board.get(state.task_id)
                if current is None or not self.board.fits(current, node, now):
                    continue
                step = self.board.assign(current, node, now)
                attempt = step.state.attempt
                signed = sign_assignment(
                    self._signer, self.board.assignment(step.state, attempt), node.node_id
                )
                assigned = self.board.with_assignment_digest(step.state, attempt, assignment_digest(signed))
                try:
                    await self._apply(Step(assigned))
                except Exception:
                    self.board.put(current)  # back on its queue
                    raise
            self.dispatched += 1
            await self._respond(reply, GridPollReply(assignment=signed))
            return assigned
        return None

    async def _offer(self) -> None:
        """Hand queued tasks to waiting nodes while both exist (a replica handed out may make the
        task's policy ask for more at once: looked at again until nothing more is handed out)."""
        progressed = True
        while progressed:
            progressed = False
            for waiter in self.board.matches(self._clock()):
                if await self._try_assign(waiter.node, waiter.reply) is None:
                    self.board.wait(waiter)
                else:
                    progressed = True

    # ----- time --------------------------------------------------------------------------------

    async def tick(self, alive: set[str] | None) -> None:
        """Answer polls that waited long enough, take back overdue replicas, drop old tombstones.

        `alive`: the nodes heard from lately; None while that is not known yet (the scheduler
        has just started and not listened for a heartbeat's interval): no node is judged lost.
        """
        for waiter in self.board.waiters_until(self._monotonic()):
            await self._respond(waiter.reply, GridPollReply(reason="no_work"))
        now = self._clock()
        requeued = False
        for state, attempt, reason, message in self.board.overdue(now, alive):
            async with self._lock(state.task_id):
                current = self.board.get(state.task_id)
                if current is None or current.final or current is not state:
                    continue  # changed since it was looked at: the next tick looks again
                if attempt is None:
                    step: Step | None = self.board.expire(current, now)
                else:
                    step = self.board.requeue(current, attempt, reason, message, now)
                    log.info("task %s: %s", current.task_id, message)
                if step is None:
                    continue
                await self._apply(step)
            requeued = requeued or self.board.wanted(step.state) > 0
        await self._short_of_owners(now)
        for state in self.board.contents_to_forget(now):
            async with self._lock(state.task_id):
                if self.board.get(state.task_id) is state and state.task_id not in self._unpublished:
                    await self._forget_contents(state)
        await self._run_rechecks()
        for task_id in self.board.tombstones_before(now):
            await self._store.delete(task_id)
            self.board.forget(task_id)
            self._locks.pop(task_id, None)
        if self._unsaved_keys:
            await self._save_keys()
        await self._publish_pending()
        if requeued:
            await self._offer()

    async def _short_of_owners(self, now: datetime) -> None:
        """Decide tasks whose results wait for an owner that no live node has (accepted unchecked
        when they agree; marked as waiting for a new owner when they disagree)."""
        candidates = self.board.short_of_owners(now)
        if not candidates:
            return
        live = self.live()
        for state in candidates:
            async with self._lock(state.task_id):
                current = self.board.get(state.task_id)
                if current is None or current is not state:
                    continue  # changed since it was looked at: the next tick looks again
                step = self.board.shortfall(current, live, now)
                if step is None:
                    continue
                if step.state.final:
                    log.info("task %s: %s", current.task_id, step.state.note)
                await self._apply(step)

    async def _run_rechecks(self) -> None:
        """Replicate again what trusted nodes caught wrong delivered unchecked within the window."""
        rechecked = False
        while self._to_recheck:
            node_id, caught_at = self._to_recheck.pop(0)
            since = caught_at - timedelta(seconds=self.board.rules.recheck_window_s)
            now = self._clock()
            found = self.board.rechecks_for(node_id, since, now)
            if found:
                log.warning(
                    "node %s was caught wrong: re-checking %d results it delivered unchecked",
                    node_id,
                    len(found),
                )
            for state in found:
                async with self._lock(state.task_id):
                    current = self.board.get(state.task_id)
                    step = None if current is None else self.board.recheck(current, now)
                    if step is None:
                        continue
                    await self._apply(step)
                self.rechecks += 1
                rechecked = True
        if rechecked:
            await self._offer()
