"""The projection use case against a fake unit of work: once-only, ordering, outcomes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest

from koprogo_ledger.domain.errors import (
    InvalidEventError,
    RequestNotYetProjectedError,
    ResponseNotYetProjectedError,
)
from koprogo_ledger.domain.records import (
    LATE_ANSWER_FIELDS,
    RequestRow,
    RequestState,
    RequestStatus,
    ResponseRow,
    UserKey,
)
from koprogo_ledger.service_layer.ports import (
    GridNodes,
    ProjectionUnitOfWork,
    ResponseState,
    TaskProjection,
    TokenLedger,
)
from koprogo_ledger.service_layer.projection import Projected, project
from koprogo_shared.events import ChatDelivered, ChatFailed, UserDataErasureRequested
from tests.unit.ledger_fakes import FakeGridNodes, FakeTaskProjection, FakeTokenLedger
from tests.unit.test_ledger_records import completed, requested


class FakeLedger:
    """Committed state, shared by the units of work made from it."""

    def __init__(self) -> None:
        self.applied: set[str] = set()
        self.requests: dict[uuid.UUID, dict[str, Any]] = {}
        self.responses: dict[uuid.UUID, dict[str, Any]] = {}
        self.commits = 0
        # The grid's ports: chat events never touch them (a test that projects grid events
        # uses tests/unit/test_grid_rewards.py's unit of work, which stages nothing either).
        self.task_projection = FakeTaskProjection()
        self.tokens = FakeTokenLedger()
        self.nodes = FakeGridNodes()


class FakeUnitOfWork(ProjectionUnitOfWork):
    """Stages writes and publishes them to the FakeLedger on commit, like a transaction."""

    def __init__(self, ledger: FakeLedger) -> None:
        self.ledger = ledger

    @property
    def tasks(self) -> TaskProjection:
        return self.ledger.task_projection

    @property
    def token_ledger(self) -> TokenLedger:
        return self.ledger.tokens

    @property
    def grid_nodes(self) -> GridNodes:
        return self.ledger.nodes

    async def _begin(self) -> None:
        self.applied = set(self.ledger.applied)
        self.requests = {k: dict(v) for k, v in self.ledger.requests.items()}
        self.responses = {k: dict(v) for k, v in self.ledger.responses.items()}

    async def _end(self) -> None:
        pass

    async def commit(self) -> None:
        self.ledger.applied, self.ledger.requests, self.ledger.responses = (
            self.applied,
            self.requests,
            self.responses,
        )
        self.ledger.commits += 1

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        staged = (
            set(self.applied),
            {k: dict(v) for k, v in self.requests.items()},
            {k: dict(v) for k, v in self.responses.items()},
        )
        try:
            yield
        except BaseException:
            self.applied, self.requests, self.responses = staged
            raise

    async def claim_event(self, event_id: str, event_type: str) -> bool:
        if event_id in self.applied:
            return False
        self.applied.add(event_id)
        return True

    async def insert_request(self, row: RequestRow) -> None:
        self.requests.setdefault(
            row.id,
            {
                "status": "pending",
                "copro_id": row.copro_id,
                "error": None,
                "user_id": row.user_id,
                "user_ref": row.user_ref,
                "trace_id": row.trace_id,
            },
        )

    async def lock_request(self, request_id: uuid.UUID) -> RequestState | None:
        row = self.requests.get(request_id)
        if row is None:
            return None
        verdict = bool((row["error"] or {}).get("caller_verdict"))
        return RequestState(row["status"], row["copro_id"], verdict)

    async def settle_request(
        self, request_id: uuid.UUID, status: RequestStatus, error: dict[str, Any] | None, at: datetime
    ) -> None:
        row = self.requests[request_id]
        row["status"] = status
        row["error"] = error or row["error"]

    async def insert_response(self, row: ResponseRow) -> bool:
        if any(r["request_id"] == row.request_id for r in self.responses.values()):
            return False
        self.responses[row.id] = {
            "request_id": row.request_id,
            "info": row.execution_info,
            "latency": row.latency_ms,
            "figures": {name: getattr(row, name) for name in LATE_ANSWER_FIELDS},
        }
        return True

    async def lock_response_of(self, request_id: uuid.UUID) -> ResponseState | None:
        for response_id, r in self.responses.items():
            if r["request_id"] == request_id:
                return ResponseState(response_id, r["info"])
        return None

    async def record_delivery(
        self, response_id: uuid.UUID, latency_ms: float, execution_info: dict[str, Any], at: datetime
    ) -> None:
        self.responses[response_id].update(latency=latency_ms, info=execution_info, delivered=at)

    async def withdraw_response(self, request_id: uuid.UUID) -> dict[str, Any] | None:
        for response_id, r in list(self.responses.items()):
            if r["request_id"] == request_id:
                del self.responses[response_id]
                return dict(r["figures"])
        return None

    async def record_late_answer(self, request_id: uuid.UUID, late: dict[str, Any]) -> None:
        row = self.requests[request_id]
        row["error"] = (row["error"] or {}) | {"late_answer": late}

    async def erase_user_contents(self, user: UserKey, at: datetime) -> int:
        self.erased = [*getattr(self, "erased", []), user]
        changed = 0
        for row in self.requests.values():
            owned = row["user_ref"] == user.ref or (
                user.as_uuid is not None and row["user_id"] == user.as_uuid
            )
            if owned and row.get("contents", True):
                row["contents"] = False
                changed += 1
        return changed


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


async def test_an_event_applied_twice_changes_the_ledger_once(ledger: FakeLedger) -> None:
    request = requested()
    answer = completed(request.id)
    assert await project(request, FakeUnitOfWork(ledger)) is Projected.APPLIED
    assert await project(answer, FakeUnitOfWork(ledger)) is Projected.APPLIED
    assert await project(answer, FakeUnitOfWork(ledger)) is Projected.DUPLICATE
    assert await project(request, FakeUnitOfWork(ledger)) is Projected.DUPLICATE
    assert len(ledger.responses) == 1
    assert ledger.commits == 2


async def test_a_completion_before_its_request_is_retried_and_leaves_no_trace(ledger: FakeLedger) -> None:
    request = requested()
    answer = completed(request.id)
    with pytest.raises(RequestNotYetProjectedError):
        await project(answer, FakeUnitOfWork(ledger))
    assert ledger.applied == set(), "not claimed, so the retry is applied"
    await project(request, FakeUnitOfWork(ledger))
    assert await project(answer, FakeUnitOfWork(ledger)) is Projected.APPLIED
    assert ledger.requests[uuid.UUID(request.id)]["status"] == "completed"


async def test_a_delivery_before_its_completion_is_retried(ledger: FakeLedger) -> None:
    request = requested()
    delivered = ChatDelivered(source="tests", request_id=request.id, latency_ms=900.0)
    await project(request, FakeUnitOfWork(ledger))
    with pytest.raises(ResponseNotYetProjectedError):
        await project(delivered, FakeUnitOfWork(ledger))
    await project(completed(request.id), FakeUnitOfWork(ledger))
    assert await project(delivered, FakeUnitOfWork(ledger)) is Projected.APPLIED
    (response,) = ledger.responses.values()
    assert response["latency"] == 900.0
    assert response["info"]["inference_ms"] == 420.0


async def test_a_delivery_of_a_failed_request_has_nothing_to_correct(ledger: FakeLedger) -> None:
    request = requested()
    await project(request, FakeUnitOfWork(ledger))
    failed = ChatFailed(source="tests", request_id=request.id, status=504, error="timeout", message="late")
    await project(failed, FakeUnitOfWork(ledger))
    delivered = ChatDelivered(source="tests", request_id=request.id, latency_ms=30000.0)
    assert await project(delivered, FakeUnitOfWork(ledger)) is Projected.IGNORED
    assert ledger.requests[uuid.UUID(request.id)]["status"] == "failed"


async def test_a_second_answer_to_the_same_request_is_not_counted(ledger: FakeLedger) -> None:
    request = requested()
    await project(request, FakeUnitOfWork(ledger))
    await project(completed(request.id), FakeUnitOfWork(ledger))
    assert await project(completed(request.id), FakeUnitOfWork(ledger)) is Projected.IGNORED
    assert len(ledger.responses) == 1


async def test_a_failure_after_an_answer_is_recorded_without_changing_the_status(ledger: FakeLedger) -> None:
    request = requested()
    await project(request, FakeUnitOfWork(ledger))
    await project(completed(request.id), FakeUnitOfWork(ledger))
    failed = ChatFailed(source="tests", request_id=request.id, status=504, error="timeout", message="late")
    await project(failed, FakeUnitOfWork(ledger))
    row = ledger.requests[uuid.UUID(request.id)]
    assert row["status"] == "completed"
    assert row["error"]["status"] == 504


UUID_USER = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("user", "erased_as"),
    # A UUID is the same user however it is spelt.
    [
        ("dev-user", "dev-user"),
        ("alice", "alice"),
        ("a.b@example.be", "a.b@example.be"),
        (UUID_USER, UUID_USER.upper()),
    ],
)
async def test_an_erasure_removes_the_users_contents_once_whatever_the_shape_of_their_id(
    ledger: FakeLedger, user: str, erased_as: str
) -> None:
    await project(requested(user_id=user), FakeUnitOfWork(ledger))
    await project(requested(user_id=user), FakeUnitOfWork(ledger))
    await project(requested(user_id=str(uuid.uuid4())), FakeUnitOfWork(ledger))
    await project(requested(user_id="bob"), FakeUnitOfWork(ledger))
    erasure = UserDataErasureRequested(source="tests", user_id=erased_as, requested_by="admin")
    assert await project(erasure, FakeUnitOfWork(ledger)) is Projected.APPLIED
    assert [row.get("contents", True) for row in ledger.requests.values()] == [False, False, True, True]
    assert await project(erasure, FakeUnitOfWork(ledger)) is Projected.DUPLICATE


async def test_an_erasure_no_row_could_match_is_an_error_not_a_silent_no_op(ledger: FakeLedger) -> None:
    unstorable = UserDataErasureRequested(source="tests", user_id="al\x00ice", requested_by="admin")
    with pytest.raises(InvalidEventError):
        await project(unstorable, FakeUnitOfWork(ledger))
    assert unstorable.id not in ledger.applied


def _verdict(request_id: str, *, caller_verdict: bool = True) -> ChatFailed:
    return ChatFailed(
        source="koprogo/gateway",
        request_id=request_id,
        status=504,
        error="timeout",
        message="no answer within 30s",
        caller_verdict=caller_verdict,
    )


async def test_a_workers_failure_after_the_gateways_verdict_keeps_the_verdict(ledger: FakeLedger) -> None:
    # A cancelled chat: the gateway records `chat_cancelled` (its verdict), then the cloud worker,
    # told to stop, reports its own failure; the row keeps the gateway's reason.
    request = requested()
    cancel = ChatFailed(
        source="koprogo/gateway",
        request_id=request.id,
        status=409,
        error="chat_cancelled",
        message="cancelled by its user",
        caller_verdict=True,
    )
    gone = ChatFailed(
        source="koprogo/cloud", request_id=request.id, status=499, error="caller_gone", message="gone"
    )
    for event in (request, cancel):
        assert await project(event, FakeUnitOfWork(ledger)) is Projected.APPLIED
    assert await project(gone, FakeUnitOfWork(ledger)) is Projected.IGNORED
    row = ledger.requests[uuid.UUID(request.id)]
    assert row["status"] == "failed"
    assert row["error"]["error"] == "chat_cancelled" and row["error"]["caller_verdict"] is True


async def test_the_gateways_verdict_withdraws_a_stored_answer_and_a_later_one_is_only_noted(
    ledger: FakeLedger,
) -> None:
    stored_first, came_late = requested(), requested()
    for event in (
        stored_first,
        completed(stored_first.id),
        _verdict(stored_first.id),
        came_late,
        _verdict(came_late.id),
        completed(came_late.id),
    ):
        assert await project(event, FakeUnitOfWork(ledger)) is Projected.APPLIED
    assert ledger.responses == {}
    for request in (stored_first, came_late):
        row = ledger.requests[uuid.UUID(request.id)]
        assert row["status"] == "failed" and row["error"]["error"] == "timeout"
        assert row["error"]["late_answer"]["total_tokens"] == 7
        assert row["error"]["late_answer"]["node_id"] == "pi-1"


async def test_a_workers_failure_after_the_answer_leaves_the_answer_counted(ledger: FakeLedger) -> None:
    # Only the gateway knows what the caller got: a redelivered attempt failing later changes nothing.
    request = requested()
    for event in (request, completed(request.id), _verdict(request.id, caller_verdict=False)):
        await project(event, FakeUnitOfWork(ledger))
    assert ledger.requests[uuid.UUID(request.id)]["status"] == "completed"
    assert len(ledger.responses) == 1


async def test_an_answer_delivered_after_the_routers_refusal_is_what_the_caller_got(
    ledger: FakeLedger,
) -> None:
    # The fault suite's NATS kill: the router refused a redelivered ChatRequested it had already
    # dispatched; its failure came first in the log, but the gateway handed the node's answer over.
    request = requested()
    refusal = _verdict(request.id, caller_verdict=False)
    answer = completed(request.id)
    for event in (
        request,
        refusal,
        answer,
        ChatDelivered(source="gw", request_id=request.id, latency_ms=900.0),
    ):
        assert await project(event, FakeUnitOfWork(ledger)) is Projected.APPLIED
    assert ledger.requests[uuid.UUID(request.id)]["status"] == "completed"
    [stored] = ledger.responses.values()
    assert stored["latency"] == 900.0 and stored["delivered"] is not None
