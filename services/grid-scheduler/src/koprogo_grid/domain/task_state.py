"""A task as the scheduler knows it: its replicas, its state, what a transition returns. Pure.

`TaskState` is what the scheduler stores for a task (the single source the board is rebuilt from);
each transition (`assignments`, `decisions`, `task_ending`, `rechecks`, called through
`board.TaskBoard`) returns a `Step` holding the new state, whose `outbox` carries the events it
produces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from koprogo_grid.domain.trust import Judgment
from koprogo_grid.domain.verification import Policy, Vote, replicas_wanted, tally
from koprogo_shared import subjects
from koprogo_shared.co2 import EdgeFootprint, attested_grams, edge_grams
from koprogo_shared.task_events import (
    FINAL_STATUSES,
    AttemptOutcome,
    AttemptRecord,
    EnergyAttestation,
    ReplicaRecord,
    ReplicaVerdict,
    TaskStatus,
    TaskSubmitted,
    TaskUsage,
    TaskVerification,
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


def _status(state: TaskState) -> TaskStatus:
    if any(r.phase == "reported" and r.verdict == "pending" for r in state.replicas):
        return "verifying"
    if any(r.phase == "running" for r in state.replicas):
        return "running"
    if any(r.phase == "assigned" for r in state.replicas):
        return "assigned"
    return "pending"


def with_events(state: TaskState, events: Iterable[tuple[str, Any]], **changes: Any) -> TaskState:
    outbox = [(subjects.task_event(step, state.task.copro_id), e.model_dump_json()) for step, e in events]
    updated = state.model_copy(update={**changes, "outbox": outbox})
    if not updated.final:
        updated = updated.model_copy(update={"status": _status(updated)})
    return updated


def replaced(state: TaskState, replica: Replica) -> list[Replica]:
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


def close_open(
    state: TaskState, now: datetime, outcome: AttemptOutcome, verdict: ReplicaVerdict
) -> tuple[list[Replica], list[str]]:
    nodes = [r.node_id for r in state.replicas if r.open]
    replicas = [r.ended(now, outcome, verdict) if r.open else r for r in state.replicas]
    return replicas, nodes


def task_grams(state: TaskState) -> float:
    """The task's CO2: every replica that ran and reported, verification included."""
    return sum(r.co2_grams for r in state.replicas if r.phase == "reported")


def wanted(state: TaskState) -> int:
    """How many more replicas `state` wants handed out now."""
    if state.final:
        return 0
    running = len(state.open_replicas)
    if state.policy is None:
        return 0 if running else 1
    counted = tally(state.votes())
    return replicas_wanted(state.quorum, state.max_replicas, counted.owners, counted.results, running)
