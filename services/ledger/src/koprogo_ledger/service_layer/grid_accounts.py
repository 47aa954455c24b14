"""Use case: what a grid event moves in the token ledger and changes in the nodes' standings,
inside the caller's transaction (the event id is already claimed by `projection`).

TaskCompleted (with its verification) pays its earning replicas and credits the fund
(`domain.rewards`); TaskCompleted and TaskFailed record each replica's verdict for its node's
counts; NodeTrustChanged records the node's standing and releases or forfeits its escrow.

Appending holds the ledger's lock until the transaction ends (`TokenLedger.lock`): the tip read
stays the tip and the escrow balances read stay true until the rows are committed, whatever
other ledgers do meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import assert_never

from koprogo_ledger.domain.errors import TaskNotYetProjectedError
from koprogo_ledger.domain.ledger_chain import chained_rows
from koprogo_ledger.domain.records import parse_id
from koprogo_ledger.domain.rewards import (
    Movement,
    RewardRules,
    completion_movements,
    escrow_account,
    escrow_nodes_released,
    moves_escrow,
    trust_movements,
)
from koprogo_ledger.service_layer.ports import ProjectionUnitOfWork, TokenLedger
from koprogo_shared.events import utc_now
from koprogo_shared.task_events import NodeTrustChanged, TaskCompleted, TaskFailed

GridAccountEvent = TaskCompleted | TaskFailed | NodeTrustChanged


def moves_tokens(event: object) -> bool:
    """Whether applying `event` may append to the token ledger (and so takes its lock)."""
    if isinstance(event, TaskCompleted):
        return event.verification is not None
    return isinstance(event, NodeTrustChanged) and moves_escrow(event)


async def apply_grid_accounts(
    event: GridAccountEvent,
    uow: ProjectionUnitOfWork,
    rules: RewardRules,
    now: Callable[[], datetime] = utc_now,
) -> bool:
    """Apply `event`'s effect on the nodes and the token ledger; False when it has none."""
    match event:
        case TaskCompleted() | TaskFailed():
            if event.verification is None:
                return False
            key = parse_id(event.task_id, "task id")
            task = await uow.tasks.lock_task(key)
            if task is None:
                raise TaskNotYetProjectedError(event.task_id)
            await uow.grid_nodes.record_replicas(key, event.verification, event.time)
            if isinstance(event, TaskCompleted):
                ledger = uow.token_ledger
                await ledger.lock()
                released = escrow_nodes_released(event)
                balances = await ledger.balances([escrow_account(n) for n in released]) if released else {}
                moves = completion_movements(
                    event,
                    rules,
                    copro_id=task.copro_id,
                    document_bytes=task.document_bytes or 0,
                    escrow_balances={n: balances.get(escrow_account(n), 0) for n in released},
                )
                await append_movements(ledger, moves, now())
            return True
        case NodeTrustChanged():
            await uow.grid_nodes.record_trust(event)
            if moves_escrow(event):
                ledger = uow.token_ledger
                await ledger.lock()
                account = escrow_account(event.node_id)
                held = (await ledger.balances([account])).get(account, 0)
                await append_movements(ledger, trust_movements(event, held), now())
            return True
        case _:
            assert_never(event)


async def append_movements(ledger: TokenLedger, moves: Sequence[Movement], at: datetime) -> int:
    """Chain the movements not in the ledger yet after its tip (the caller holds the lock); how many."""
    if not moves:
        return 0
    known = await ledger.known_entries([m.entry_id for m in moves])
    fresh = [m for m in moves if m.entry_id not in known]
    if not fresh:
        return 0
    await ledger.insert(chained_rows(fresh, await ledger.tip(), at))
    return len(fresh)
