"""The port the projection writes through: one unit of work = one PostgreSQL transaction."""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from koprogo_ledger.domain.records import RequestRow, RequestState, RequestStatus, ResponseRow


@dataclass(frozen=True, slots=True)
class ResponseState:
    id: uuid.UUID
    execution_info: dict[str, Any]


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
    async def record_delivery(
        self, response_id: uuid.UUID, latency_ms: float, execution_info: dict[str, Any]
    ) -> None: ...


UnitOfWorkFactory = Callable[[], ProjectionUnitOfWork]
