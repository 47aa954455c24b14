"""Movements as hash-chained ledger rows (`koprogo_shared.token_chain`). Pure.

A row's `recorded_at` is hashed as the datetime PostgreSQL gives back (UTC, microseconds), so
what is hashed and what is stored are the same value: `recorded_at_now` drops nothing that a
TIMESTAMPTZ cannot hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from koprogo_ledger.domain.rewards import Movement
from koprogo_shared.token_chain import GENESIS, entry_hash


@dataclass(frozen=True, slots=True)
class ChainTip:
    """The last entry of the chain (seq 0 and GENESIS when it is empty)."""

    seq: int = 0
    hash: str = GENESIS


def recorded_at(now: datetime) -> datetime:
    """`now` as a TIMESTAMPTZ stores it and asyncpg returns it: UTC, microsecond precision."""
    if now.tzinfo is None:
        raise ValueError("recorded_at needs an aware datetime")
    return now.astimezone(UTC)


def chained_rows(movements: Sequence[Movement], tip: ChainTip, at: datetime) -> list[dict[str, Any]]:
    """`movements` as rows following `tip`: seq tip+1..., each carrying the previous row's hash."""
    rows: list[dict[str, Any]] = []
    prev, seq = tip.hash, tip.seq
    when = recorded_at(at)
    for move in movements:
        seq += 1
        row: dict[str, Any] = {
            "seq": seq,
            "entry_id": move.entry_id,
            "recorded_at": when,
            "debit": move.debit,
            "credit": move.credit,
            "amount_mt": move.amount_mt,
            "kind": move.kind,
            "task_id": move.task_id,
            "node_id": move.node_id,
            "copro_id": move.copro_id,
            "memo": dict(move.memo),
            "prev_hash": prev,
        }
        row["hash"] = entry_hash(row)
        rows.append(row)
        prev = row["hash"]
    return rows
