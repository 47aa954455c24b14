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
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from koprogo_grid.domain.rules import GridRules
from koprogo_grid.domain.trust import JudgedVerdict, Judgment
from koprogo_grid.domain.verification import (
    Policy,
    Vote,
    groups,
    policy_for,
    reachable,
    replicas_wanted,
    short_of_owners,
    spot_check_drawn,
    tally,
)
from koprogo_shared import subjects
from koprogo_shared.co2 import EdgeFootprint, attested_grams, edge_grams
from koprogo_shared.task_events import (
    FINAL_STATUSES,
    AttemptOutcome,
    AttemptRecord,
    EnergyAttestation,
    ReplicaRecord,
    ReplicaVerdict,
    TaskAssigned,
    TaskAssignment,
    TaskCancelled,
    TaskCompleted,
    TaskExpired,
    TaskFailed,
    TaskRequeued,
    TaskResultReported,
    TaskStarted,
    TaskStatus,
    TaskSubmitted,
    TaskUsage,
    TaskVerification,
    TaskVerifying,
    task_event_id,
)

SOURCE = "koprogo-grid-scheduler"

# How a replica ended when it was taken back: each counts against `max_attempts`.
TAKEN_BACK: frozenset[str] = frozenset({"node_lost", "not_started", "deadline_missed", "failed", "refused"})
Outcome = Literal["pending", "accepted", "accepted_unchecked", "unverifiable"]


class NodeFootprint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    power_watts: float = Field(ge=0)
    intensity_g_per_kwh: float = Field(ge=0)
    renewable_attested: bool = False

    def edge(self) -> EdgeFootprint:
        return EdgeFootprint(self.power_watts, self.intensity_g_per_kwh, self.renewable_attested)


class Replica(BaseModel):
    """One attempt of a task on one node: its deadlines, what it reported, how it was judged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempt: int = Field(ge=1)
    node_id: str
    owner: str
    # The node's standing when it was handed the work, then when its result came.
    trusted: bool = False
    # assigned/running: open; reported: its result is in (judged by `verdict`); ended: taken back,
    # cancelled, or no longer needed.
    phase: Literal["assigned", "running", "reported", "ended"] = "assigned"
    outcome: AttemptOutcome | None = None
    verdict: ReplicaVerdict = "pending"
    footprint: NodeFootprint | None = None
    start_by: datetime | None = None
    run_deadline: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    # The digest of the signed assignment the node was given: its report must name it.
    assignment_digest: str | None = None
    result_digest: str | None = None
    agreement_key: str | None = None
    usage: TaskUsage | None = None
    attestation: EnergyAttestation | None = None
    co2_grams: float = Field(default=0.0, ge=0)
    flags: list[str] = Field(default_factory=list)
    # Its result, kept until the task is decided (a decision taken at a tick, without a report in
    # hand, publishes it) and forgotten with the task's other contents; only the newest replica
    # of each distinct result keeps it.
    result: dict[str, Any] | None = None

    @property
    def open(self) -> bool:
        return self.phase in ("assigned", "running")

    @property
    def has_result(self) -> bool:
        return self.phase == "reported" and self.agreement_key is not None

    def record(self) -> ReplicaRecord:
        return ReplicaRecord(
            attempt=self.attempt,
            node_id=self.node_id,
            owner=self.owner,
            trusted=self.trusted,
            verdict=self.verdict,
            result_digest=self.result_digest,
            agreement_key=self.agreement_key,
            usage=self.usage,
            attestation=self.attestation,
            co2_grams=self.co2_grams,
            flags=list(self.flags),
        )

    def attempt_record(self) -> AttemptRecord:
        return AttemptRecord(
            attempt=self.attempt,
            node_id=self.node_id,
            started_at=self.started_at,
            ended_at=self.ended_at,
            outcome=self.outcome,
        )

    def ended(self, now: datetime, outcome: AttemptOutcome, verdict: ReplicaVerdict) -> Replica:
        return self.model_copy(
            update={"phase": "ended", "ended_at": now, "outcome": outcome, "verdict": verdict}
        )


class TaskState(BaseModel):
    """What the scheduler knows of one task (stored as JSON in `subjects.GRID_TASKS_BUCKET`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: TaskSubmitted
    status: TaskStatus = "pending"
    # The last attempt number handed out (each replica is an attempt).
    attempt: int = 0
    # Fixed when the first replica is handed out (None until then).
    policy: Policy | None = None
    quorum: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=1, ge=1)
    outcome: Outcome = "pending"
    replicas: list[Replica] = Field(default_factory=list)
    final_at: datetime | None = None
    # When the scheduler first heard of it (None: stored before this was kept; its submission time).
    queued_at: datetime | None = None
    # Why its verification departs from its policy's usual rule (`TaskVerification.note`).
    note: str | None = None
    # A result a trusted node delivered unchecked: its inputs are kept until then, so that it can
    # be re-checked if the node is caught wrong meanwhile (None once its contents are forgotten).
    recheck_until: datetime | None = None
    # Replicated again after its trusted node was caught wrong (once at most), and the attempt
    # whose unchecked result is being checked.
    rechecked: bool = False
    recheck_of: int | None = None
    # The events this state's last transition produced, as (subject, event JSON): published after
    # the state is stored, published again after a restart (their ids make the repeat harmless).
    outbox: list[tuple[str, str]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_part_one(cls, data: Any) -> Any:
        """A state stored by the scheduler before replicas (one attempt at a time) reads as replicas."""
        if not isinstance(data, dict) or "replicas" in data or "attempts" not in data:
            return data
        old = dict(data)
        node_id = old.pop("node_id", None)
        footprint = old.pop("footprint", None)
        start_by = old.pop("start_by", None)
        run_deadline = old.pop("run_deadline", None)
        status = old.get("status")
        replicas = []
        for record in old.pop("attempts") or []:
            current = record.get("outcome") is None and record.get("attempt") == old.get("attempt")
            replica: dict[str, Any] = {
                "attempt": record["attempt"],
                "node_id": record["node_id"],
                "owner": record["node_id"],
                "started_at": record.get("started_at"),
                "ended_at": record.get("ended_at"),
                "outcome": record.get("outcome"),
                "phase": "ended",
                "verdict": "lost" if record.get("outcome") in TAKEN_BACK else "pending",
            }
            if current and status in ("assigned", "running") and node_id == record["node_id"]:
                replica |= {
                    "phase": status,
                    "footprint": footprint,
                    "start_by": start_by,
                    "run_deadline": run_deadline,
                }
            replicas.append(replica)
        old["replicas"] = replicas
        return old

    @property
    def task_id(self) -> str:
        return self.task.id

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def expires_at(self) -> datetime:
        """Until when replicas may run: the task's expiry, or for a re-check the end of its window."""
        if self.rechecked and self.recheck_until is not None:
            return self.recheck_until
        return self.task.expires_at

    def event_id(self, what: str) -> str:
        """A decision's event id; a re-check's decision is another event than the first one."""
        return task_event_id(self.task.id, f"recheck:{what}" if self.rechecked else what)

    @property
    def open_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.open]

    @property
    def node_id(self) -> str | None:
        """The node of the latest replica still running, if any."""
        found = self.open_replicas
        return found[-1].node_id if found else None

    @property
    def attempts(self) -> list[AttemptRecord]:
        return [r.attempt_record() for r in self.replicas]

    @property
    def failures(self) -> int:
        return sum(1 for r in self.replicas if r.outcome in TAKEN_BACK)

    def replica(self, attempt: int) -> Replica | None:
        return next((r for r in self.replicas if r.attempt == attempt), None)

    def votes(self) -> list[Vote]:
        return [
            Vote(r.attempt, r.owner, r.agreement_key)
            for r in self.replicas
            if r.has_result and r.agreement_key
        ]

    def busy_owners(self) -> set[str]:
        """Owners that may not take another replica: running one, reported one, or refused."""
        return {r.owner for r in self.replicas if r.open or r.phase == "reported" or r.outcome == "refused"}

    def verification(self) -> TaskVerification | None:
        if self.policy is None:
            return None
        counted = tally(self.votes())
        agreement = counted.owners
        if self.outcome in ("accepted", "accepted_unchecked"):
            agreement = len(
                {r.owner for r in self.replicas if r.verdict in ("valid", "unchecked", "flagged")}
            )
        return TaskVerification(
            policy=self.policy,
            quorum=self.quorum,
            max_replicas=self.max_replicas,
            replicas=[r.record() for r in self.replicas],
            agreement=agreement,
            outcome=self.outcome,
            note=self.note,
        )


@dataclass(frozen=True, slots=True)
class Step:
    """A transition: the new state (its outbox holds its events), the nodes to tell to stop the
    task, and what the trust book must count."""

    state: TaskState
    cancel_nodes: list[str] = field(default_factory=list)
    judgments: list[Judgment] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReportCheck:
    """What the service layer found about a report before the board decides on it.

    `refusal`: why the signature checks refused it (None: it is the node's own word on its work);
    `agreement_key`: the comparator's key of its result; `flags`: why its energy attestation is
    not believed (empty: plausible); `trusted`: the node's standing now.
    """

    refusal: str | None = None
    agreement_key: str | None = None
    flags: tuple[str, ...] = ()
    trusted: bool = False


@dataclass(frozen=True, slots=True)
class PollingNode:
    """A node asking for work, as its heartbeat describes it, with its owner and standing."""

    node_id: str
    task_types: frozenset[str]
    pools: frozenset[str]
    footprint: NodeFootprint
    owner: str = ""
    trusted: bool = False

    @property
    def owner_id(self) -> str:
        return self.owner or self.node_id


@dataclass(frozen=True, slots=True)
class LiveNode:
    """A node alive now, as its heartbeats describe it: who owns it, what it runs, where from."""

    node_id: str
    owner: str
    task_types: frozenset[str]
    pools: frozenset[str] = frozenset({subjects.SHARED_POOL})


@dataclass(slots=True)
class Waiter:
    node: PollingNode
    reply: Any  # what the entrypoint needs to answer the poll (its inbox); opaque here
    until: float  # monotonic seconds


def may_run(node: PollingNode | LiveNode, task: TaskSubmitted) -> bool:
    """A shared-pool node runs any copro's tasks; a copro's own node only that copro's."""
    if subjects.SHARED_POOL in node.pools:
        return True
    return task.copro_id is not None and subjects.copro_pool(task.copro_id) in node.pools


def new_owners(state: TaskState, live: Iterable[LiveNode]) -> set[str]:
    """Owners not already on the task (running, reported, refused) with a live node able to run it."""
    busy = state.busy_owners()
    return {
        n.owner or n.node_id
        for n in live
        if state.task.task_type in n.task_types
        and may_run(n, state.task)
        and (n.owner or n.node_id) not in busy
    }


def _status(state: TaskState) -> TaskStatus:
    if any(r.phase == "reported" and r.verdict == "pending" for r in state.replicas):
        return "verifying"
    if any(r.phase == "running" for r in state.replicas):
        return "running"
    if any(r.phase == "assigned" for r in state.replicas):
        return "assigned"
    return "pending"


def _with_events(state: TaskState, events: Iterable[tuple[str, Any]], **changes: Any) -> TaskState:
    outbox = [(subjects.task_event(step, state.task.copro_id), e.model_dump_json()) for step, e in events]
    updated = state.model_copy(update={**changes, "outbox": outbox})
    if not updated.final:
        updated = updated.model_copy(update={"status": _status(updated)})
    return updated


def _replace(state: TaskState, replica: Replica) -> list[Replica]:
    return [replica if r.attempt == replica.attempt else r for r in state.replicas]


def replica_grams(replica: Replica, duration_s: float | None = None) -> float:
    """A replica's CO2: from its energy attestation when believed, else its declared footprint x time."""
    a = replica.attestation
    if a is not None and not replica.flags:
        return attested_grams(a.wh, a.intensity_g_per_kwh, a.solar_share)
    seconds = duration_s if duration_s is not None else (replica.usage.duration_s if replica.usage else 0.0)
    if replica.footprint is None:
        return 0.0
    return edge_grams(seconds, replica.footprint.edge())


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
        self._waiters: dict[str, OrderedDict[str, Waiter]] = {}

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

    def wanted(self, state: TaskState) -> int:
        """How many more replicas `state` wants handed out now."""
        if state.final:
            return 0
        running = len(state.open_replicas)
        if state.policy is None:
            return 0 if running else 1
        counted = tally(state.votes())
        return replicas_wanted(state.quorum, state.max_replicas, counted.owners, counted.results, running)

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
            return self._expired(state, now)
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

    def assign(self, state: TaskState, node: PollingNode, now: datetime) -> Step:
        """Hand a replica of `state` to `node` (the policy is fixed with the first one)."""
        attempt = state.attempt + 1
        deadline = min(
            now + timedelta(seconds=self.rules.run_deadline_s(state.task.task_type)), state.expires_at
        )
        policy, quorum, max_replicas = state.policy, state.quorum, state.max_replicas
        if policy is None:
            drawn = node.trusted and spot_check_drawn(state.task_id, self.salt, self.rules.spot_check_rate)
            policy = policy_for(node.trusted, drawn)
            quorum = 1 if policy == "trusted" else self.rules.quorum
            max_replicas = max(self.rules.max_replicas, quorum)
        elif policy == "trusted" and not node.trusted:
            # The trusted node's replica was taken back: an untrusted node's result needs a quorum.
            policy, quorum, max_replicas = "quorum", self.rules.quorum, max(self.rules.max_replicas, quorum)
        event = TaskAssigned(
            id=task_event_id(state.task_id, f"assigned:{attempt}"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            time=now,
            task_id=state.task_id,
            task_type=state.task.task_type,
            attempt=attempt,
            node_id=node.node_id,
            deadline=deadline,
        )
        replica = Replica(
            attempt=attempt,
            node_id=node.node_id,
            owner=node.owner_id,
            trusted=node.trusted,
            footprint=node.footprint,
            start_by=now + timedelta(seconds=self.rules.start_grace_s),
            run_deadline=deadline,
        )
        return Step(
            _with_events(
                state,
                [("assigned", event)],
                attempt=attempt,
                policy=policy,
                quorum=quorum,
                max_replicas=max_replicas,
                replicas=[*state.replicas, replica],
                note=None,  # an owner came: the task no longer waits for one
            )
        )

    @staticmethod
    def assignment(state: TaskState, attempt: int) -> TaskAssignment:
        """What the node given `attempt` receives (unsigned: the service layer signs it)."""
        replica = state.replica(attempt)
        assert replica is not None and replica.run_deadline is not None
        return TaskAssignment(
            task_id=state.task_id,
            copro_id=state.task.copro_id,
            task_type=state.task.task_type,
            attempt=attempt,
            parameters=state.task.parameters,
            document=state.task.document,
            deadline=replica.run_deadline,
        )

    @staticmethod
    def with_assignment_digest(state: TaskState, attempt: int, digest: str) -> TaskState:
        replica = state.replica(attempt)
        assert replica is not None
        return state.model_copy(
            update={"replicas": _replace(state, replica.model_copy(update={"assignment_digest": digest}))}
        )

    @staticmethod
    def current(state: TaskState, node_id: str, attempt: int) -> Replica | None:
        """The open replica `attempt` of `node_id`, or None (an old attempt, another node, decided)."""
        if state.final:
            return None
        replica = state.replica(attempt)
        if replica is None or not replica.open or replica.node_id != node_id:
            return None
        return replica

    def started(self, state: TaskState, event: TaskStarted, now: datetime) -> Step | None:
        """The running state, or None when the start is not for an assigned replica."""
        replica = self.current(state, event.node_id, event.attempt)
        if replica is None or replica.phase != "assigned":
            return None
        running = replica.model_copy(update={"phase": "running", "started_at": event.time})
        # The state carries no event: the node's own TaskStarted is the fact.
        return Step(_with_events(state, [], replicas=_replace(state, running)))

    def reported(
        self,
        state: TaskState,
        report: TaskResultReported,
        check: ReportCheck,
        now: datetime,
        live: Iterable[LiveNode] | None = None,
    ) -> Step | None:
        """The decision on a node's report, or None when it is not for an open replica.

        `live`: the nodes alive now (None: not known, a quorum is always waited for)."""
        replica = self.current(state, report.node_id, report.attempt)
        if replica is None:
            return None
        if check.refusal is not None:
            refused = replica.ended(now, "refused", "refused").model_copy(update={"trusted": check.trusted})
            judged = Judgment(
                replica.node_id, replica.owner, "refused", state.task_id, replica.attempt, state.task.copro_id
            )
            step = self._take_back(
                state,
                refused,
                "refused",
                f"node {report.node_id}: its report was refused ({check.refusal})",
                now,
            )
            return Step(step.state, step.cancel_nodes, [judged, *step.judgments])
        if report.outcome == "completed" and report.result is not None and check.agreement_key is not None:
            done = replica.model_copy(
                update={
                    "phase": "reported",
                    "ended_at": now,
                    "outcome": "completed",
                    "trusted": check.trusted,
                    "result_digest": report.result_digest,
                    "agreement_key": check.agreement_key,
                    "usage": report.usage,
                    "attestation": report.attestation,
                    "flags": list(check.flags),
                    "result": report.result,
                }
            )
            done = done.model_copy(update={"co2_grams": replica_grams(done, report.usage.duration_s)})
            judgments = []
            if check.flags:
                judgments.append(
                    Judgment(
                        replica.node_id,
                        replica.owner,
                        "flagged",
                        state.task_id,
                        replica.attempt,
                        state.task.copro_id,
                    )
                )
            # One result kept per distinct result (the newest): the stored state stays small.
            replicas = [
                r.model_copy(update={"result": None})
                if r.agreement_key == done.agreement_key and r.result is not None
                else r
                for r in _replace(state, done)
            ]
            replicas = [done if r.attempt == done.attempt else r for r in replicas]
            updated = state.model_copy(update={"replicas": replicas})
            if updated.policy is None:  # a replica handed out before verification existed
                updated = updated.model_copy(
                    update={
                        "policy": "quorum",
                        "quorum": self.rules.quorum,
                        "max_replicas": self.rules.max_replicas,
                    }
                )
            if updated.policy == "trusted" and (check.flags or not check.trusted):
                # Taken alone only from a node still trusted with a believable attestation.
                updated = updated.model_copy(
                    update={
                        "policy": "spot_check" if check.trusted else "quorum",
                        "quorum": self.rules.quorum,
                        "max_replicas": max(self.rules.max_replicas, self.rules.quorum),
                    }
                )
            step = self._decide(updated, done, now, live)
            return Step(step.state, step.cancel_nodes, [*judgments, *step.judgments])
        if report.outcome == "input_error" and not state.rechecked:
            ended = state.model_copy(
                update={"replicas": _replace(state, replica.ended(now, "input_error", "lost"))}
            )
            return self._failed(
                ended,
                now,
                report.error or "invalid_input",
                report.message or "the task's input cannot be processed",
                "input_error",
            )
        message = report.message or "the node could not run the task"
        if report.outcome == "completed":
            message = "the node reported no result"
        return self._take_back(
            state, replica.ended(now, "failed", "lost"), "failed", f"node {report.node_id}: {message}", now
        )

    def _decide(
        self, state: TaskState, current: Replica, now: datetime, live: Iterable[LiveNode] | None
    ) -> Step:
        """After a result: accepted (a quorum agrees, or every result agrees and no other owner can
        run it), unverifiable (a quorum never can), or verifying."""
        counted = tally(state.votes(), prefer=current.agreement_key)
        state = state.model_copy(update={"note": None})  # a note of waiting for an owner is old news
        if counted.key is not None and counted.owners >= state.quorum:
            return self._accepted(state, counted.key, now, current=current.attempt)
        if not reachable(state.quorum, state.max_replicas, counted.owners, counted.results):
            return self._unverifiable(state, now)
        shortfall = self.shortfall(state, live, now)
        if shortfall is not None:
            return shortfall
        updated = state.model_copy(update={"outcome": "pending"})
        event = TaskVerifying(
            id=task_event_id(state.task_id, f"verifying:{current.attempt}"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            time=now,
            task_id=state.task_id,
            verification=updated.verification(),  # type: ignore[arg-type]
        )
        return Step(_with_events(updated, [("verifying", event)]))

    def owner_wait_over(self, state: TaskState, now: datetime) -> bool:
        """Whether the grace for a second owner's node to announce itself passed since it was queued."""
        since = state.queued_at or state.task.time
        return now >= since + timedelta(seconds=self.rules.owner_wait_s)

    def shortfall(self, state: TaskState, live: Iterable[LiveNode] | None, now: datetime) -> Step | None:
        """The task decided without its quorum because no other owner can run it
        (`verification.short_of_owners`), or None when the usual rule applies (`live` None: the
        live nodes are not known). Results that all agree: accepted unchecked; that disagree: the
        task waits for a new owner (its verification says so) until it expires."""
        if live is None or state.final or state.rechecked or state.policy is None:
            return None
        votes = state.votes()
        counted = tally(votes)
        rule = short_of_owners(
            wanted=self.wanted(state),
            running=len(state.open_replicas),
            results=counted.results,
            distinct=groups(votes),
            new_owners=len(new_owners(state, live)),
            waited_enough=self.owner_wait_over(state, now),
        )
        if rule == "accept_unchecked" and counted.key is not None:
            if not any(r.result is not None for r in state.replicas if r.agreement_key == counted.key):
                return None  # stored before results were kept: it waits for a quorum as it did
            note = (
                f"owners_short: no other owner's node can run {state.task.task_type}; "
                f"{counted.owners} of the {state.quorum} owners wanted agreed, taken unchecked"
            )
            reduced = state.model_copy(update={"quorum": counted.owners, "note": note})
            return self._accepted(reduced, counted.key, now, unchecked=True)
        if rule == "await_owner":
            note = (
                f"owners_short: {counted.results} results disagree and no other owner's node can run "
                f"{state.task.task_type}; waiting for one until the task expires"
            )
            if state.note == note:
                return None
            updated = state.model_copy(update={"outcome": "pending", "note": note})
            event = TaskVerifying(
                id=task_event_id(state.task_id, f"verifying:awaiting_owner:{state.attempt}"),
                source=SOURCE,
                copro_id=state.task.copro_id,
                time=now,
                task_id=state.task_id,
                verification=updated.verification(),  # type: ignore[arg-type]
            )
            return Step(_with_events(updated, [("verifying", event)]))
        return None

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

    def _accepted(
        self,
        state: TaskState,
        key: str,
        now: datetime,
        *,
        current: int | None = None,
        unchecked: bool | None = None,
    ) -> Step:
        """Accept the result agreeing on `key`, published as replica `current`'s (the one just
        reported; None: the latest that gave it). `unchecked`: taken without a quorum (default:
        the policy "trusted" takes it alone)."""
        if unchecked is None:
            unchecked = state.policy == "trusted"
        replicas: list[Replica] = []
        cancel: list[str] = []
        judgments: list[Judgment] = []
        for r in state.replicas:
            if r.has_result and r.verdict == "pending":
                verdict: JudgedVerdict
                if r.agreement_key == key:
                    verdict = "unchecked" if unchecked else ("flagged" if r.flags else "valid")
                    r = r.model_copy(update={"verdict": verdict, "outcome": "completed"})
                else:
                    verdict = "invalid"
                    r = r.model_copy(update={"verdict": "invalid", "outcome": "invalid"})
                if verdict == "flagged":
                    pass  # counted when it reported
                elif verdict == "valid" and r.attempt == state.recheck_of:
                    pass  # right, but done before its node was caught: its new run starts from new work
                else:
                    judgments.append(
                        Judgment(r.node_id, r.owner, verdict, state.task_id, r.attempt, state.task.copro_id)
                    )
            elif r.open:
                cancel.append(r.node_id)
                r = r.ended(now, "not_needed", "not_needed")
            replicas.append(r)
        decided = state.model_copy(
            update={"replicas": replicas, "outcome": "accepted_unchecked" if unchecked else "accepted"}
        )
        # Kept for a re-check only when a trusted node's result was taken unchecked: an untrusted
        # node caught wrong later triggers none.
        if (
            unchecked
            and self.rules.recheck_window_s > 0
            and any(r.verdict == "unchecked" and r.trusted for r in replicas)
        ):
            decided = decided.model_copy(
                update={"recheck_until": now + timedelta(seconds=self.rules.recheck_window_s)}
            )
        agreeing = [r for r in replicas if r.has_result and r.agreement_key == key and r.result is not None]
        chosen = next((r for r in agreeing if r.attempt == current), None) or max(
            agreeing, key=lambda r: r.attempt
        )
        assert chosen.result is not None and chosen.usage is not None
        event = TaskCompleted(
            id=state.event_id("completed"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            time=now,
            task_id=state.task_id,
            task_type=state.task.task_type,
            attempt=chosen.attempt,
            node_id=chosen.node_id,
            result=chosen.result,
            usage=chosen.usage,
            co2_grams=self.task_grams(decided),
            verification=decided.verification(),
        )
        return Step(
            _with_events(decided, [("completed", event)], status="completed", final_at=now), cancel, judgments
        )

    def _unverifiable(self, state: TaskState, now: datetime, message: str | None = None) -> Step:
        """Failed `unverifiable`: results that waited for agreement were not needed (their
        replicas stay `pending` in the verification, never judged)."""
        decided = state.model_copy(update={"outcome": "unverifiable"})
        counted = tally(decided.votes())
        step = self._failed(
            decided,
            now,
            "unverifiable",
            message
            or f"{counted.results} results from distinct owners never reached a quorum of {state.quorum} "
            f"(at most {state.max_replicas} asked for; the largest agreeing group had {counted.owners})",
            "not_needed",
            close_as="not_needed",
        )
        return step

    @staticmethod
    def task_grams(state: TaskState) -> float:
        """The task's CO2: every replica that ran and reported, verification included."""
        return sum(r.co2_grams for r in state.replicas if r.phase == "reported")

    def requeue(
        self, state: TaskState, attempt: int, reason: AttemptOutcome, message: str, now: datetime
    ) -> Step | None:
        """Take replica `attempt` back (None when it is not open any more)."""
        replica = state.replica(attempt)
        if replica is None or not replica.open or state.final:
            return None
        return self._take_back(state, replica.ended(now, reason, "lost"), reason, message, now)

    def _take_back(
        self, state: TaskState, ended: Replica, reason: AttemptOutcome, message: str, now: datetime
    ) -> Step:
        """Queue a replica's work again, or fail the task when its attempts ran out."""
        updated = state.model_copy(update={"replicas": _replace(state, ended)})
        if updated.failures >= self.rules.max_attempts and state.rechecked:
            return self._end_recheck(updated, now)
        if updated.failures >= self.rules.max_attempts:
            tried = "; ".join(f"{a.node_id}: {a.outcome}" for a in updated.attempts)
            return self._failed(
                updated,
                now,
                "attempts_exhausted",
                f"{updated.failures} attempts failed ({tried}); last: {message}",
                reason,
            )
        event = TaskRequeued(
            id=task_event_id(state.task_id, f"requeued:{ended.attempt}"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            time=now,
            task_id=state.task_id,
            attempt=ended.attempt,
            node_id=ended.node_id,
            reason=reason,
            message=message,
        )
        return Step(_with_events(updated, [("requeued", event)]))

    def cancel(self, state: TaskState, now: datetime) -> Step | None:
        """The cancelled state (every node running a replica to be told), or None when final already
        (a re-check of a completed task included: the user's task is done)."""
        if state.final or state.rechecked:
            return None
        replicas, nodes = self._close_open(state, now, "cancelled", "not_needed")
        event = TaskCancelled(
            id=task_event_id(state.task_id, "cancelled"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            time=now,
            task_id=state.task_id,
            attempts=state.attempt,
        )
        return Step(
            _with_events(state, [("cancelled", event)], status="cancelled", final_at=now, replicas=replicas),
            nodes,
        )

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

    def expire(self, state: TaskState, now: datetime) -> Step:
        """At its expiry: a re-check ends; results that disagree (no owner came to break the tie)
        fail `unverifiable` with the verification; otherwise the task expired."""
        if state.rechecked:
            return self._end_recheck(state, now)
        votes = state.votes()
        if groups(votes) > 1:
            counted = tally(votes)
            return self._unverifiable(
                state,
                now,
                f"{counted.results} results disagree and no other owner's node agreed with one of them "
                f"before the task expired (a quorum of {state.quorum} distinct owners is needed)",
            )
        return self._expired(state, now)

    # ----- re-checks ---------------------------------------------------------------------------

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

    def recheck(self, state: TaskState, now: datetime) -> Step | None:
        """Replicate a task accepted unchecked again, by quorum: its unchecked result is one vote."""
        if not (state.final and state.outcome == "accepted_unchecked" and not state.rechecked):
            return None
        if state.recheck_until is None or state.recheck_until <= now:
            return None
        original = next((r.attempt for r in state.replicas if r.verdict == "unchecked"), None)
        # Judged again now that its node is untrusted (`trusted` is the standing a verdict is given with).
        replicas = [
            r.model_copy(update={"verdict": "pending", "trusted": False}) if r.verdict == "unchecked" else r
            for r in state.replicas
        ]
        reopened = state.model_copy(
            update={
                "status": "verifying",
                "final_at": None,
                "rechecked": True,
                "recheck_of": original,
                "policy": "quorum",
                "quorum": self.rules.quorum,
                "max_replicas": max(self.rules.max_replicas, self.rules.quorum),
                "outcome": "pending",
                "note": None,
                "replicas": replicas,
            }
        )
        event = TaskVerifying(
            id=task_event_id(state.task_id, "recheck:verifying"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            time=now,
            task_id=state.task_id,
            verification=reopened.verification(),  # type: ignore[arg-type]
        )
        return Step(_with_events(reopened, [("verifying", event)]))

    def _end_recheck(self, state: TaskState, now: datetime) -> Step:
        """A re-check that cannot finish (its window passed, its attempts ran out): the task stays
        as it was decided (completed, unchecked); its running replicas are stopped."""
        replicas, nodes = self._close_open(state, now, "not_needed", "not_needed")
        replicas = [
            r.model_copy(update={"verdict": "unchecked", "trusted": True})
            if r.attempt == state.recheck_of
            else r
            for r in replicas
        ]
        ended = state.model_copy(
            update={
                "replicas": replicas,
                "status": "completed",
                "final_at": now,
                "outcome": "accepted_unchecked",
                "outbox": [],
            }
        )
        return Step(ended, nodes)

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

    def _close_open(
        self, state: TaskState, now: datetime, outcome: AttemptOutcome, verdict: ReplicaVerdict
    ) -> tuple[list[Replica], list[str]]:
        nodes = [r.node_id for r in state.replicas if r.open]
        replicas = [r.ended(now, outcome, verdict) if r.open else r for r in state.replicas]
        return replicas, nodes

    def _expired(self, state: TaskState, now: datetime) -> Step:
        replicas, nodes = self._close_open(state, now, "expired", "lost")
        event = TaskExpired(
            id=task_event_id(state.task_id, "expired"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            time=now,
            task_id=state.task_id,
            attempts=state.attempt,
        )
        return Step(
            _with_events(state, [("expired", event)], status="expired", final_at=now, replicas=replicas),
            nodes,
        )

    def _failed(
        self,
        state: TaskState,
        now: datetime,
        error: str,
        message: str,
        outcome: AttemptOutcome,
        *,
        close_as: AttemptOutcome = "cancelled",
    ) -> Step:
        replicas, nodes = self._close_open(state, now, close_as, "not_needed")
        closed = state.model_copy(update={"replicas": replicas})
        event = TaskFailed(
            id=state.event_id("failed"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            time=now,
            task_id=state.task_id,
            error=error,
            message=message,
            attempts=state.attempt,
            co2_grams=self.task_grams(closed),
            last_attempt_outcome=outcome if state.attempt else None,
            verification=closed.verification(),
        )
        return Step(_with_events(closed, [("failed", event)], status="failed", final_at=now), nodes)

    # ----- waiting nodes ----------------------------------------------------------------------

    def wait(self, waiter: Waiter) -> Waiter | None:
        """Keep `waiter` until a task fits it; returns the same node's previous waiter, to be answered."""
        previous = None
        for task_type in waiter.node.task_types:
            found = self._waiters.setdefault(task_type, OrderedDict()).pop(waiter.node.node_id, None)
            previous = previous or found
            self._waiters[task_type][waiter.node.node_id] = waiter
        return previous

    def _waiter_for(self, state: TaskState, now: datetime, skip_owners: set[str]) -> Waiter | None:
        """The longest-waiting node that may take a replica of `state`, taken off every waiting list."""
        waiting = self._waiters.get(state.task.task_type)
        if not waiting:
            return None
        for node_id, waiter in waiting.items():
            if waiter.node.owner_id not in skip_owners and self.fits(state, waiter.node, now):
                self._drop_waiter(node_id, waiter)
                return waiter
        return None

    def matches(self, now: datetime) -> list[Waiter]:
        """Waiting nodes for which a queued task fits now, taken off the waiting lists (at most as many
        per queued task as it wants replicas, of distinct owners); the caller assigns each its
        oldest fitting task."""
        found: list[Waiter] = []
        for task_type, waiting in list(self._waiters.items()):
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
                    waiter = self._waiter_for(state, now, owners)
                    if waiter is None:
                        break
                    owners.add(waiter.node.owner_id)
                    found.append(waiter)
        return found

    def waiters_until(self, monotonic_now: float) -> list[Waiter]:
        """Waiters whose poll has waited long enough: taken off, to be answered "no work"."""
        done: dict[str, Waiter] = {}
        for waiting in self._waiters.values():
            for node_id, waiter in waiting.items():
                if waiter.until <= monotonic_now:
                    done[node_id] = waiter
        for node_id, waiter in done.items():
            self._drop_waiter(node_id, waiter)
        return list(done.values())

    def waiting_count(self) -> int:
        return len({node_id for waiting in self._waiters.values() for node_id in waiting})

    def _drop_waiter(self, node_id: str, waiter: Waiter) -> None:
        for task_type in waiter.node.task_types:
            waiting = self._waiters.get(task_type)
            if waiting is not None and waiting.get(node_id) is waiter:
                del waiting[node_id]
