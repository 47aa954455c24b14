"""In-memory fakes of the ledger's grid ports (`TaskProjection`, `TokenLedger`, `GridNodes`), for
unit tests of the projection's use cases. They apply writes at once: the unit of work that hands
them out decides what a commit or a rollback means for its own state."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any

from koprogo_ledger.domain.ledger_chain import ChainTip
from koprogo_ledger.domain.task_records import AttemptState, TaskFinish, TaskRow, TaskState
from koprogo_ledger.service_layer.ports import GridNodes, TaskProjection, TokenLedger
from koprogo_shared.task_events import AttemptOutcome, NodeTrustChanged, TaskStatus, TaskVerification


@dataclasses.dataclass
class FakeAttempt:
    node_id: str
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: AttemptOutcome | None = None

    def state(self, attempt: int) -> AttemptState:
        return AttemptState(attempt, self.node_id, self.started_at is not None, self.outcome is not None)


class FakeTaskProjection(TaskProjection):
    """`mcp_tasks` and `mcp_task_attempts` as dictionaries, optionally seeded with task states."""

    def __init__(self, states: dict[uuid.UUID, TaskState] | None = None) -> None:
        self.states: dict[uuid.UUID, TaskState] = dict(states or {})
        self.rows: dict[uuid.UUID, TaskRow] = {}
        self.attempts: dict[uuid.UUID, dict[int, FakeAttempt]] = {}
        self.finished: dict[uuid.UUID, TaskFinish] = {}
        self.verifications: dict[uuid.UUID, tuple[datetime, dict[str, Any]]] = {}

    async def insert_task(self, row: TaskRow) -> bool:
        if row.id in self.states:
            return False
        self.rows[row.id] = row
        self.states[row.id] = TaskState("pending", row.copro_id, 0)
        return True

    async def lock_task(self, task_id: uuid.UUID) -> TaskState | None:
        return self.states.get(task_id)

    async def record_attempt(
        self,
        task_id: uuid.UUID,
        attempt: int,
        node_id: str,
        *,
        assigned_at: datetime | None = None,
        started_at: datetime | None = None,
        ended_at: datetime | None = None,
        outcome: AttemptOutcome | None = None,
    ) -> None:
        row = self.attempts.setdefault(task_id, {}).setdefault(attempt, FakeAttempt(node_id))
        row.assigned_at = row.assigned_at or assigned_at
        row.started_at = row.started_at or started_at
        if ended_at is not None and (row.ended_at is None or ended_at < row.ended_at):
            row.ended_at, row.outcome = ended_at, outcome

    async def attempt(self, task_id: uuid.UUID, attempt: int) -> AttemptState | None:
        row = self.attempts.get(task_id, {}).get(attempt)
        return row.state(attempt) if row is not None else None

    async def latest_attempt(self, task_id: uuid.UUID) -> AttemptState | None:
        rows = self.attempts.get(task_id, {})
        return rows[max(rows)].state(max(rows)) if rows else None

    async def end_open_attempts(self, task_id: uuid.UUID, outcome: AttemptOutcome, at: datetime) -> int:
        open_rows = [row for row in self.attempts.get(task_id, {}).values() if row.outcome is None]
        for row in open_rows:
            row.ended_at, row.outcome = at, outcome
        return len(open_rows)

    async def set_progress(
        self, task_id: uuid.UUID, status: TaskStatus, latest: AttemptState | None, at: datetime
    ) -> None:
        state = self.states[task_id]
        attempts = max(state.attempts, latest.attempt if latest is not None else 0)
        self.states[task_id] = dataclasses.replace(state, status=status, attempts=attempts)

    async def finish(self, task_id: uuid.UUID, finish: TaskFinish, at: datetime) -> None:
        state = self.states[task_id]
        self.states[task_id] = dataclasses.replace(
            state, status=finish.status, attempts=finish.attempts, error=finish.error, completed_at=at
        )
        self.finished[task_id] = finish

    async def set_verification(
        self, task_id: uuid.UUID, verification: dict[str, Any], at: datetime, *, in_progress: bool
    ) -> bool:
        held = self.verifications.get(task_id)
        if held is not None and held[0] > at:
            return False
        self.verifications[task_id] = (at, verification)
        state = self.states[task_id]
        if in_progress and state.completed_at is None:
            self.states[task_id] = dataclasses.replace(state, status="verifying")
        return True


class FakeTokenLedger(TokenLedger):
    """The chained rows as a list; `insert` checks that they follow the tip."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.locked = 0

    async def lock(self) -> None:
        self.locked += 1

    async def tip(self) -> ChainTip:
        return ChainTip(self.rows[-1]["seq"], self.rows[-1]["hash"]) if self.rows else ChainTip()

    async def known_entries(self, entry_ids: list[str]) -> set[str]:
        return {r["entry_id"] for r in self.rows} & set(entry_ids)

    async def balances(self, accounts: list[str]) -> dict[str, int]:
        out = dict.fromkeys(accounts, 0)
        for r in self.rows:
            if r["credit"] in out:
                out[r["credit"]] += r["amount_mt"]
            if r["debit"] in out:
                out[r["debit"]] -= r["amount_mt"]
        return out

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        assert [r["seq"] for r in rows] == list(range(len(self.rows) + 1, len(self.rows) + len(rows) + 1))
        self.rows += rows


class FakeGridNodes(GridNodes):
    """Each replica's verdict and each node's trust."""

    def __init__(self) -> None:
        self.verdicts: dict[tuple[uuid.UUID, int], str] = {}
        self.trust: dict[str, bool] = {}

    async def record_replicas(self, task_id: uuid.UUID, verification: TaskVerification, at: datetime) -> None:
        for r in verification.replicas:
            self.verdicts[(task_id, r.attempt)] = r.verdict

    async def record_trust(self, event: NodeTrustChanged) -> None:
        self.trust[event.node_id] = event.trusted
