"""The scheduler's board: every task it still has to decide, its replicas, its queues, the decisions. Pure.

Each transition returns a `Step`: the task's new `TaskState` with the events it produces in its
`outbox`, the nodes to tell to stop, and the judgments of nodes for the trust book. The service
layer stores the state (the single source the board is rebuilt from after a restart) and then
publishes the outbox. A task runs as one or more replicas (attempts), each on a node of a
distinct owner (docs/grid-trust.md):

    pending ──assign──► assigned ──started──► running ──report──► verifying ──► completed | failed
       ▲                   │                     │                   │ (a quorum of distinct owners
       └──── requeue ◄─────┴─────────────────────┘                   │  agree; or never: unverifiable)
          (a replica's node lost, not started, deadline missed,      └─► more replicas queued
           attempt failed, report refused; bounded by max_attempts)
    pending/assigned/running/verifying ──► expired (expires_at) | cancelled (on request)

The task's policy is fixed when its first replica is handed out (`verification.policy_for`): an
untrusted node's task needs `quorum` agreeing results; a trusted node's is taken alone unless the
draw picks it for a spot check. Up to `quorum` replicas run at once; when results disagree another
is queued, up to `max_replicas` results. A task's status is the furthest its replicas got:
verifying once a result waits for others, else running, assigned, or pending.

Fewer owners than the quorum (`verification.short_of_owners`): when a task wants another replica,
none is running, and no live node of an owner not already on it can run its type (`LiveNode`,
from heartbeats) once `owner_wait_s` passed since it was queued, results that all agree are
accepted alone (`accepted_unchecked`: no trust earned, rewards in escrow); results that disagree
wait for a new owner until the task's expiry, then it fails `unverifiable`. Decided when a result
comes and at each tick (a node may die while another's result waits).

Queues are FIFO per task type; a node polling for several types gets the oldest task among them
that it may run (its pools: the shared pool runs every copro's tasks, a copro's own pool only that
copro's) and that has no replica of its owner yet. Nodes that poll when no task waits are kept as
waiters, per task type, and get the next task that fits at once.

The board holds the index (the states, the queues, the waiting nodes of `waiting_nodes`); the rules
on one task are functions over its `TaskState` (`task_state`), called with the board's rules:
`assignments` hands replicas out, `decisions` judges reports and results, `task_ending` takes
replicas back and ends tasks, `rechecks` replicates a result taken unchecked again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from koprogo_grid.domain import assignments, decisions, rechecks, task_ending, task_state
from koprogo_grid.domain.nodes import LiveNode, PollingNode, may_run
from koprogo_grid.domain.rules import GridRules
from koprogo_grid.domain.task_state import ReportCheck, Step, TaskState
from koprogo_grid.domain.waiting_nodes import Waiter, WaitingNodes
from koprogo_shared.task_events import AttemptOutcome, TaskResultReported, TaskSubmitted


class TaskBoard:
    """The tasks still to decide, indexed for polling. Holds no I/O and no clock: callers pass `now`.

    `salt`: the scheduler's secret for the spot-check draw (set by the service layer at start).
    """

    def __init__(self, rules: GridRules, salt: bytes = b"") -> None:
        self.rules = rules
        self.salt = salt
        self._states: dict[str, TaskState] = {}
        self._queues: dict[str, deque[str]] = {}
        self._queued: set[str] = set()
        self._waiting = WaitingNodes()

    # ----- state -------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskState | None:
        return self._states.get(task_id)

    def states(self) -> Iterator[TaskState]:
        return iter(list(self._states.values()))

    def put(self, state: TaskState) -> None:
        """Record a stored state (and queue it when it wants a replica)."""
        self._states[state.task_id] = state
        if self.wanted(state) > 0 and state.task_id not in self._queued:
            self._queues.setdefault(state.task.task_type, deque()).append(state.task_id)
            self._queued.add(state.task_id)

    def forget(self, task_id: str) -> None:
        self._states.pop(task_id, None)

    def load(self, states: Iterable[TaskState]) -> None:
        """Rebuild the board from stored states, tasks wanting replicas queued by submission time."""
        for state in sorted(states, key=lambda s: s.task.time):
            self.put(state)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for state in self._states.values():
            found[state.status] = found.get(state.status, 0) + 1
        return found

    wanted = staticmethod(task_state.wanted)

    def fits(self, state: TaskState, node: PollingNode, now: datetime) -> bool:
        """Whether `node` may take a replica of `state` now."""
        return (
            self.wanted(state) > 0
            and state.expires_at > now
            and may_run(node, state.task)
            and node.owner_id not in state.busy_owners()
            and node.node_id not in {r.node_id for r in state.replicas if r.open or r.phase == "reported"}
        )

    # ----- transitions ----------------------------------------------------------------------

    def submitted(self, task: TaskSubmitted, now: datetime) -> Step | None:
        """The new task's state, or None when it is known already (a redelivered submission)."""
        if task.id in self._states:
            return None
        state = TaskState(task=task, queued_at=now)
        if task.expires_at <= now:
            return task_ending.expired(state, now)
        return Step(state)

    def next_task(self, node: PollingNode, now: datetime) -> TaskState | None:
        """The oldest queued task `node` may take a replica of (None: nothing fits)."""
        best: tuple[datetime, str] | None = None
        for task_type in node.task_types:
            queue = self._queues.get(task_type)
            while queue and self._stale(queue[0]):
                self._queued.discard(queue.popleft())  # decided or fully handed out since it was queued
            if not queue:
                continue
            for task_id in queue:
                state = self._states.get(task_id)
                if state is not None and self.fits(state, node, now):
                    if best is None or state.task.time < best[0]:
                        best = (state.task.time, task_id)
                    break
        return None if best is None else self._states[best[1]]

    def _stale(self, task_id: str) -> bool:
        state = self._states.get(task_id)
        return state is None or self.wanted(state) == 0

    # The transitions of one task (assignments, decisions, task_ending, rechecks), given the board's
    # rules and salt as they are when called.

    def assign(self, state: TaskState, node: PollingNode, now: datetime) -> Step:
        """Hand `node` a replica of `state` (`assignments.assign`)."""
        return assignments.assign(self.rules, self.salt, state, node, now)

    assignment = staticmethod(assignments.assignment)
    with_assignment_digest = staticmethod(assignments.with_assignment_digest)
    current = staticmethod(assignments.current)
    started = staticmethod(assignments.started)

    def reported(
        self,
        state: TaskState,
        report: TaskResultReported,
        check: ReportCheck,
        now: datetime,
        live: Iterable[LiveNode] | None = None,
    ) -> Step | None:
        """Judge a node's report of a replica (`decisions.reported`)."""
        return decisions.reported(self.rules, state, report, check, now, live)

    def shortfall(self, state: TaskState, live: Iterable[LiveNode] | None, now: datetime) -> Step | None:
        """Decide a task short of owners for its quorum (`decisions.shortfall`)."""
        return decisions.shortfall(self.rules, state, live, now)

    def requeue(
        self, state: TaskState, attempt: int, reason: AttemptOutcome, message: str, now: datetime
    ) -> Step | None:
        """Take a replica back and queue the task again, within its attempts (`task_ending.requeue`)."""
        return task_ending.requeue(self.rules, state, attempt, reason, message, now)

    cancel = staticmethod(task_ending.cancel)
    expire = staticmethod(task_ending.expire)

    def recheck(self, state: TaskState, now: datetime) -> Step | None:
        """Replicate a result taken unchecked again (`rechecks.recheck`)."""
        return rechecks.recheck(self.rules, state, now)

    # ----- queries ---------------------------------------------------------------------------

    def short_of_owners(self, now: datetime) -> list[TaskState]:
        """Tasks with results that want another replica and have none running: the tick asks
        `shortfall` about each (an owner's node may have gone while its result waited)."""
        return [
            s
            for s in self._states.values()
            if not s.final
            and not s.rechecked
            and s.policy is not None
            and not s.open_replicas
            and s.votes()
            and self.wanted(s) > 0
            and s.expires_at > now
        ]

    def overdue(
        self, now: datetime, alive: set[str] | None
    ) -> list[tuple[TaskState, int | None, AttemptOutcome, str]]:
        """Tasks to end (expired: attempt None) and replicas to take back: node lost (not judged
        while `alive` is None: not known yet), not started in time, deadline missed."""
        found: list[tuple[TaskState, int | None, AttemptOutcome, str]] = []
        for state in self._states.values():
            if state.final:
                continue
            if state.expires_at <= now:
                found.append((state, None, "expired", "the task expired before a node finished it"))
                continue
            for r in state.open_replicas:
                if alive is not None and r.node_id not in alive:
                    found.append(
                        (state, r.attempt, "node_lost", f"node {r.node_id} stopped sending heartbeats")
                    )
                elif r.phase == "assigned" and r.start_by is not None and r.start_by <= now:
                    found.append(
                        (state, r.attempt, "not_started", f"node {r.node_id} did not start it in time")
                    )
                elif r.run_deadline is not None and r.run_deadline <= now:
                    found.append(
                        (state, r.attempt, "deadline_missed", f"node {r.node_id} missed its deadline")
                    )
        return found

    def rechecks_for(self, node_id: str, since: datetime, now: datetime) -> list[TaskState]:
        """Tasks `node_id` completed alone (unchecked) since `since` whose inputs are still kept."""
        return [
            s
            for s in self._states.values()
            if s.final
            and s.outcome == "accepted_unchecked"
            and not s.rechecked
            and s.recheck_until is not None
            and s.recheck_until > now
            and s.final_at is not None
            and s.final_at >= since
            and any(r.node_id == node_id and r.verdict == "unchecked" for r in s.replicas)
        ]

    def contents_to_forget(self, now: datetime) -> list[TaskState]:
        """Final tasks whose inputs were kept for a re-check that can no longer come."""
        return [
            s
            for s in self._states.values()
            if s.final and s.recheck_until is not None and s.recheck_until <= now
        ]

    def tombstones_before(self, now: datetime) -> list[str]:
        """Final tasks kept longer than `final_keep_s`: their keys may go."""
        limit = now - timedelta(seconds=self.rules.final_keep_s)
        return [
            s.task_id
            for s in self._states.values()
            if s.final and s.final_at is not None and s.final_at < limit
        ]

    # ----- waiting nodes ----------------------------------------------------------------------

    def wait(self, waiter: Waiter) -> Waiter | None:
        return self._waiting.wait(waiter)

    def matches(self, now: datetime) -> list[Waiter]:
        """Waiting nodes for which a queued task fits now, taken off the waiting lists (at most as many
        per queued task as it wants replicas, of distinct owners); the caller assigns each its
        oldest fitting task."""
        found: list[Waiter] = []
        for task_type, waiting in self._waiting.per_type():
            queue = self._queues.get(task_type)
            if not waiting or not queue:
                continue
            for task_id in list(queue):
                if not waiting:
                    break
                state = self._states.get(task_id)
                if state is None:
                    continue
                owners: set[str] = set()
                for _ in range(self.wanted(state)):
                    waiter = self._waiting.waiter_for(state, now, owners, self.fits)
                    if waiter is None:
                        break
                    owners.add(waiter.node.owner_id)
                    found.append(waiter)
        return found

    def waiters_until(self, monotonic_now: float) -> list[Waiter]:
        return self._waiting.waiters_until(monotonic_now)

    def waiting_count(self) -> int:
        return self._waiting.waiting_count()
