"""GDPR use cases: export a user's stored chats and grid tasks, and ask the ledger to erase their contents
(a task's input and result go, its status and figures stay).

Any user id is served, whatever its shape (`dev-user`, `alice`, an e-mail, a UUID): the ledger
keeps the token's `sub` as text. An erasure is accepted (202) only once the ledger's tables
have answered for the user: one the system cannot perform (the database unreachable, a ledger
schema from before text user ids) is an error, never an acceptance that erases nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from koprogo_gateway.adapters.user_data_repository import PostgresUserDataRepository
from koprogo_gateway.domain.access import Caller, require_user_data_access
from koprogo_shared.events import UserDataErasureRequested

SOURCE = "koprogo/gateway"

# Puts the erasure on the bus; raises `BusUnavailableError` when the bus does not take it.
PublishErasure = Callable[[UserDataErasureRequested], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ErasureAccepted:
    """The erasure's event id, and how many stored requests and grid tasks of the user it covers."""

    event_id: str
    requests: int
    tasks: int = 0


async def export_user_data(
    store: PostgresUserDataRepository, caller: Caller, user_id: str
) -> list[dict[str, Any]]:
    """Every stored request of `user_id`, oldest first, with its response; the user's own, or an admin's."""
    require_user_data_access(caller, user_id)
    return await store.export(user_id)


async def export_user_tasks(
    store: PostgresUserDataRepository, caller: Caller, user_id: str
) -> list[dict[str, Any]]:
    """Every grid task `user_id` submitted, oldest first; the user's own, or an admin's."""
    require_user_data_access(caller, user_id)
    return await store.export_tasks(user_id)


async def request_erasure(
    store: PostgresUserDataRepository,
    publish: PublishErasure,
    caller: Caller,
    user_id: str,
    forget_idempotency_keys: Callable[[str], Awaitable[None]] | None = None,
) -> ErasureAccepted:
    """Ask the ledger to erase the contents of every stored request of `user_id` and of its answers,
    and the input and result of every grid task the user submitted.

    The gateway's own copies go first: the answers kept 24 h for retries with an idempotency key
    (`forget_idempotency_keys`; a store that cannot do it refuses the erasure, 503)."""
    require_user_data_access(caller, user_id)
    assert caller.user_id is not None  # require_user_data_access refuses anonymous callers
    requests = await store.count_requests(user_id)
    tasks = await store.count_tasks(user_id)
    if forget_idempotency_keys is not None:
        await forget_idempotency_keys(user_id)
    event = UserDataErasureRequested(source=SOURCE, user_id=user_id, requested_by=caller.user_id)
    await publish(event)
    return ErasureAccepted(event_id=event.id, requests=requests, tasks=tasks)
