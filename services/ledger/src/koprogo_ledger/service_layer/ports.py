"""The ledger's ports: the projection's unit of work (one PostgreSQL transaction) and the contents' maintenance."""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self

from koprogo_ledger.domain.ledger_chain import ChainTip
from koprogo_ledger.domain.records import RequestRow, RequestState, RequestStatus, ResponseRow, UserKey
from koprogo_ledger.domain.task_records import AttemptState, TaskFinish, TaskRow, TaskState
from koprogo_shared.task_events import AttemptOutcome, NodeTrustChanged, TaskStatus, TaskVerification


@dataclass(frozen=True, slots=True)
class ResponseState:
    id: uuid.UUID
    execution_info: dict[str, Any]


@dataclass(slots=True)  # not frozen: the plan settles it in place when its answer comes
class NewRequest:
    """A request inserted by a set-based batch, already settled when its answer came in the same batch."""

    row: RequestRow
    status: RequestStatus = "pending"
    completed_at: datetime | None = None


@dataclass(slots=True)  # not frozen: the plan marks it delivered in place
class NewResponse:
    """A response inserted by a set-based batch; `delivered_at` set when its delivery came in the
    same batch (then `row.latency_ms` and `row.execution_info` are the delivered ones)."""

    row: ResponseRow
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    """A request already stored whose answer a set-based batch applies."""

    request_id: uuid.UUID
    status: RequestStatus
    at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    """A response already stored that a set-based batch marks delivered (`at`: the first delivery)."""

    response_id: uuid.UUID
    latency_ms: float
    execution_info: dict[str, Any]
    at: datetime


class ProjectionUnitOfWork(abc.ABC):
    """A transaction over the ledger's tables.

    Nothing is kept unless `commit()` is called inside the `async with` block; leaving the
    block without it (or by an exception) rolls everything back. Inside it, `savepoint()`
    blocks let one part fail without the rest. Adapters raise `InvalidEventError` for values
    the database can never store and `StoreUnavailableError` when it cannot be reached.
    """

    async def __aenter__(self) -> Self:
        await self._begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._end()

    @abc.abstractmethod
    async def _begin(self) -> None: ...

    @abc.abstractmethod
    async def _end(self) -> None:
        """Roll back unless committed, and release what `_begin` took."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Keep everything; raises (and keeps nothing) if a savepoint could not be undone."""

    @abc.abstractmethod
    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A block whose writes are undone if it raises, the transaction going on without them."""

    @abc.abstractmethod
    async def claim_event(self, event_id: str, event_type: str) -> bool:
        """Record the event as applied; False when it already was (a redelivery)."""

    @abc.abstractmethod
    async def insert_request(self, row: RequestRow) -> None: ...

    @abc.abstractmethod
    async def lock_request(self, request_id: uuid.UUID) -> RequestState | None:
        """The request, locked until the end of the transaction; None when not projected yet."""

    @abc.abstractmethod
    async def settle_request(
        self, request_id: uuid.UUID, status: RequestStatus, error: dict[str, Any] | None, at: datetime
    ) -> None:
        """Set the status; record `error` when given; `completed_at` keeps its first value."""

    @abc.abstractmethod
    async def insert_response(self, row: ResponseRow) -> bool:
        """False when the request already has a response (only one answer per request is kept)."""

    @abc.abstractmethod
    async def lock_response_of(self, request_id: uuid.UUID) -> ResponseState | None: ...

    @abc.abstractmethod
    async def withdraw_response(self, request_id: uuid.UUID) -> dict[str, Any] | None:
        """Delete the request's response (an answer the caller did not get); its figures
        (`records.LATE_ANSWER_FIELDS`), or None when it has none."""

    @abc.abstractmethod
    async def record_late_answer(self, request_id: uuid.UUID, late: dict[str, Any]) -> None:
        """Keep `late` in the request's `error` document as `late_answer`."""

    @abc.abstractmethod
    async def record_delivery(
        self, response_id: uuid.UUID, latency_ms: float, execution_info: dict[str, Any], at: datetime
    ) -> None:
        """The caller got the answer at `at`, having waited `latency_ms`."""

    @abc.abstractmethod
    async def erase_user_contents(self, user: UserKey, at: datetime) -> int:
        """Remove the contents of every request of `user` and of their responses, and the parameters,
        document reference, result and error message of their grid tasks, keeping every other
        column; rows already without contents keep their `contents_purged_at`. Returns the
        number of rows changed (0 when applied again)."""

    # Set-based steps (`service_layer.chat_batch`): each applies many rows at once. The defaults
    # apply them one by one with the methods above; the PostgreSQL adapter uses one statement each.

    async def claim_events(self, claims: Sequence[tuple[str, str]]) -> set[str]:
        """Record each (event id, type) as applied; the ids that were not already (distinct ids)."""
        return {event_id for event_id, event_type in claims if await self.claim_event(event_id, event_type)}

    async def lock_requests(self, request_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, RequestState]:
        """Those of the requests that are projected, locked until the end of the transaction."""
        states = {i: await self.lock_request(i) for i in request_ids}
        return {i: state for i, state in states.items() if state is not None}

    async def lock_responses_of(self, request_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, ResponseState]:
        """The responses of those requests that have one, by request id, locked."""
        responses = {i: await self.lock_response_of(i) for i in request_ids}
        return {i: response for i, response in responses.items() if response is not None}

    async def insert_requests(self, requests: Sequence[NewRequest]) -> None:
        """Insert requests none of which is stored yet (raises, whatever the error, if one is)."""
        for new in requests:
            await self.insert_request(new.row)
            if new.status != "pending":
                assert new.completed_at is not None
                await self.settle_request(new.row.id, new.status, None, new.completed_at)

    async def insert_responses(self, responses: Sequence[NewResponse]) -> None:
        """Insert responses to requests that have none yet (raises if one has)."""
        for new in responses:
            if not await self.insert_response(new.row):
                raise RuntimeError(f"request {new.row.request_id} already has a response")
            if new.delivered_at is not None:
                await self.record_delivery(
                    new.row.id, new.row.latency_ms, new.row.execution_info, new.delivered_at
                )

    async def settle_requests(self, settlements: Sequence[Settlement]) -> None:
        for s in settlements:
            await self.settle_request(s.request_id, s.status, None, s.at)

    async def record_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            await self.record_delivery(d.response_id, d.latency_ms, d.execution_info, d.at)

    @property
    @abc.abstractmethod
    def tasks(self) -> TaskProjection:
        """The grid's tasks, in the same transaction."""

    @property
    @abc.abstractmethod
    def token_ledger(self) -> TokenLedger:
        """The token ledger, in the same transaction."""

    @property
    @abc.abstractmethod
    def grid_nodes(self) -> GridNodes:
        """The grid nodes' standings, in the same transaction."""


class TaskProjection(abc.ABC):
    """`mcp_tasks` and `mcp_task_attempts`, inside the unit of work's transaction.

    An attempt's times keep their first value and its end is the earliest decision that ended
    it, so a redelivered or late event never rewrites what happened before it. `updated_at` becomes the latest event time the
    row reflects (`GREATEST`), so an old event applied late does not move it back.
    """

    @abc.abstractmethod
    async def insert_task(self, row: TaskRow) -> bool:
        """False when the task is already there."""

    @abc.abstractmethod
    async def lock_task(self, task_id: uuid.UUID) -> TaskState | None:
        """The task, locked until the end of the transaction; None when not projected yet."""

    @abc.abstractmethod
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
        """Create the attempt's row or fill what it lacks (an existing node_id is kept); an earlier
        end (`ended_at`, `outcome`) replaces a later one."""

    @abc.abstractmethod
    async def attempt(self, task_id: uuid.UUID, attempt: int) -> AttemptState | None: ...

    @abc.abstractmethod
    async def latest_attempt(self, task_id: uuid.UUID) -> AttemptState | None: ...

    @abc.abstractmethod
    async def end_open_attempts(self, task_id: uuid.UUID, outcome: AttemptOutcome, at: datetime) -> int:
        """Give every attempt without an outcome this one, ended at `at`; how many."""

    @abc.abstractmethod
    async def set_progress(
        self, task_id: uuid.UUID, status: TaskStatus, latest: AttemptState | None, at: datetime
    ) -> None:
        """A non-final status; `attempts` and `assigned_node` follow the latest attempt (never go back)."""

    @abc.abstractmethod
    async def finish(self, task_id: uuid.UUID, finish: TaskFinish, at: datetime) -> None:
        """A final status with its figures; `completed_at` is `at`."""

    @abc.abstractmethod
    async def set_verification(
        self, task_id: uuid.UUID, verification: dict[str, Any], at: datetime, *, in_progress: bool
    ) -> bool:
        """The task's verification as of `at`, unless it holds one of a later time; `in_progress`
        also makes a task not final `verifying`. False when nothing changed."""


class TokenLedger(abc.ABC):
    """`grid_ledger_entries`, inside the unit of work's transaction (append-only).

    Whoever appends holds `lock()` first, until the transaction ends, so the tip it read stays
    the tip until its rows are committed, and the balances it read stay true.
    """

    @abc.abstractmethod
    async def lock(self) -> None:
        """Take the ledger's append lock (re-entrant within the transaction)."""

    @abc.abstractmethod
    async def tip(self) -> ChainTip:
        """The last entry's seq and hash (seq 0 and GENESIS for an empty ledger)."""

    @abc.abstractmethod
    async def known_entries(self, entry_ids: list[str]) -> set[str]:
        """Those of `entry_ids` already in the ledger."""

    @abc.abstractmethod
    async def balances(self, accounts: list[str]) -> dict[str, int]:
        """Each account's balance in milli-tokens (0 for an account without entries)."""

    @abc.abstractmethod
    async def insert(self, rows: list[dict[str, Any]]) -> None:
        """Append chained rows (`ledger_chain.chained_rows`)."""


class GridNodes(abc.ABC):
    """`grid_nodes` and `grid_task_replicas`, inside the unit of work's transaction."""

    @abc.abstractmethod
    async def record_replicas(self, task_id: uuid.UUID, verification: TaskVerification, at: datetime) -> None:
        """Keep each decided replica's verdict (one per task and attempt) and recount its node's."""

    @abc.abstractmethod
    async def record_trust(self, event: NodeTrustChanged) -> None:
        """The node's standing as the scheduler says, unless a later change is already recorded."""


class LedgerHeads(abc.ABC):
    """The chain's tip and its signed heads, each call its own transaction."""

    @abc.abstractmethod
    async def tip(self) -> ChainTip: ...

    @abc.abstractmethod
    async def last_signed_seq(self) -> int:
        """The seq of the latest signed head (0 when none)."""

    @abc.abstractmethod
    async def insert_head(
        self, seq: int, hash_: str, signed_at: datetime, signer: str, signature: str
    ) -> bool:
        """False when a head at `seq` was already signed (by another ledger)."""

    @abc.abstractmethod
    async def register_key(self, public_key: str, at: datetime) -> None:
        """Record the key heads are signed with; LedgerKeyError when heads were signed with another."""


UnitOfWorkFactory = Callable[[], ProjectionUnitOfWork]


class UndeliveredAnswers(abc.ABC):
    """The answers stored but never handed to their caller (`records.NO_GATEWAY_DELIVERED_IT`)."""

    @abc.abstractmethod
    async def settle(self, deadline_before: datetime, limit: int) -> int:
        """Settle as failed up to `limit` completed requests whose deadline is before
        `deadline_before` and whose answer no gateway delivered: their response leaves the stats
        and is kept as the request's `error.late_answer`. Returns how many."""


ContentTable = Literal["mcp_requests", "mcp_responses"]
CONTENT_TABLES: tuple[ContentTable, ...] = ("mcp_requests", "mcp_responses")


class ContentStore(abc.ABC):
    """The stored contents (request messages, response texts) as a whole.

    Each batch method is one transaction over at most `limit` rows of `table` and returns
    how many rows it changed; rows another transaction holds are skipped, not waited for.
    """

    @abc.abstractmethod
    def exclusively(self, *, wait: bool = False) -> AbstractAsyncContextManager[bool]:
        """A block holding the contents' lock across ledgers; it yields False, at once, when another
        ledger holds it (or, with `wait`, waits for it and yields True)."""

    @abc.abstractmethod
    async def seal_plaintext(self, table: ContentTable, limit: int) -> int:
        """Encrypt rows written before contents were encrypted (no key id, not purged)."""

    @abc.abstractmethod
    async def reseal_under_current_key(self, table: ContentTable, limit: int) -> int:
        """Re-encrypt rows sealed under another key than the keyring's current one."""

    @abc.abstractmethod
    async def purge_contents(self, table: ContentTable, created_before: datetime, limit: int) -> int:
        """Remove the contents of rows created before `created_before`, keeping every other column."""

    @abc.abstractmethod
    async def count_by_key(self) -> dict[ContentTable, dict[str | None, int]]:
        """Rows with contents, per table and key id (None: still plaintext)."""
