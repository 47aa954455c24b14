"""The grid's token ledger as the gateway shows it (docs/grid-trust.md, "API"). Pure.

The ledger service writes `grid_ledger_entries`, `grid_ledger_heads`, `grid_nodes` (migration
0007_token_ledger); the gateway reads them. Amounts are stored as integers in milli-tokens
(`token_chain.MILLI` per token) and shown in tokens. Accounts are `node:<id>`, `escrow:<id>`,
`copro:<id>` and `fund:solidarity`.

What a member may read: the ledger itself is public to every member (node ids, copro ids,
amounts, task ids; no user ids and no contents), so that anyone can verify or export it; a
node's standing and balance are its operator's and the admins'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from koprogo_gateway.domain.errors import InvalidQueryError
from koprogo_shared.token_chain import MILLI

FUND_ACCOUNT = "fund:solidarity"
# The kinds of entries that credit the fund, always shown (zero when none yet).
FUND_INFLOW_KINDS = ("fund_share", "co2_credit", "escrow_forfeit")
DEFAULT_ENTRIES = 50
MAX_ENTRIES = 500
# seq is a BIGINT.
MAX_SEQ = 2**63 - 1


def node_account(node_id: str) -> str:
    return f"node:{node_id}"


def escrow_account(node_id: str) -> str:
    return f"escrow:{node_id}"


def tokens(amount_mt: int) -> float:
    """Milli-tokens as tokens."""
    return amount_mt / MILLI


@dataclass(frozen=True)
class NodeStanding:
    """One node as the ledger's `grid_nodes` and its accounts hold it."""

    node_id: str
    owner: str
    trusted: bool
    valid_streak: int
    validated: int
    invalid: int
    refused: int
    flagged: int
    updated_at: datetime | None
    balance_mt: int
    escrow_mt: int


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    entry_id: str
    recorded_at: datetime
    debit: str
    credit: str
    amount_mt: int
    kind: str
    task_id: str | None
    node_id: str | None
    copro_id: str | None
    memo: dict[str, Any]
    hash: str


@dataclass(frozen=True)
class EntryPage:
    """Entries newest first: at most `limit`, only those before `before_seq` when given."""

    limit: int = DEFAULT_ENTRIES
    before_seq: int | None = None


@dataclass(frozen=True)
class NodeAccounts:
    """A node's balance, its escrow, and a page of the entries that touch either account."""

    node_id: str
    balance_mt: int
    escrow_mt: int
    entries: tuple[LedgerEntry, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class FundFigures:
    balance_mt: int
    # Milli-tokens credited to the fund, by entry kind.
    inflows_mt: dict[str, int]
    # The CO2 the fund's co2_credit entries stand for (their memo's `co2_saved_grams`).
    co2_saved_grams: float


def parse_entry_page(limit: str | None, before_seq: str | None) -> EntryPage:
    """`?limit=&before_seq=` from query text; InvalidQueryError (422) naming the bad one."""
    count = DEFAULT_ENTRIES
    if limit is not None:
        try:
            count = int(limit)
        except ValueError:
            raise InvalidQueryError(f"limit {limit!r} is not a whole number") from None
        if not 1 <= count <= MAX_ENTRIES:
            raise InvalidQueryError(f"limit must be between 1 and {MAX_ENTRIES}")
    before = None
    if before_seq is not None:
        try:
            before = int(before_seq)
        except ValueError:
            raise InvalidQueryError(f"before_seq {before_seq!r} is not a whole number") from None
        if not 1 <= before <= MAX_SEQ:
            raise InvalidQueryError(f"before_seq must be between 1 and {MAX_SEQ}")
    return EntryPage(limit=count, before_seq=before)


def parse_node_id(text: str) -> str:
    """A node id from a path: any text PostgreSQL can hold (NUL is refused, 422)."""
    if "\x00" in text:
        raise InvalidQueryError("a node id cannot contain a NUL character")
    return text


class GridNodeOut(BaseModel):
    """A node's standing on the grid and what it holds, in tokens."""

    model_config = ConfigDict(frozen=True)

    node_id: str
    owner: str
    trusted: bool
    valid_streak: int
    validated: int
    invalid: int
    refused: int
    flagged: int
    updated_at: datetime | None
    balance: float
    escrow: float

    @classmethod
    def of(cls, node: NodeStanding) -> GridNodeOut:
        return cls(
            node_id=node.node_id,
            owner=node.owner,
            trusted=node.trusted,
            valid_streak=node.valid_streak,
            validated=node.validated,
            invalid=node.invalid,
            refused=node.refused,
            flagged=node.flagged,
            updated_at=node.updated_at,
            balance=tokens(node.balance_mt),
            escrow=tokens(node.escrow_mt),
        )


class GridNodesOut(BaseModel):
    nodes: list[GridNodeOut]


class LedgerEntryOut(BaseModel):
    """One ledger entry: `amount` tokens moved from `debit` to `credit` (`amount_mt` exactly)."""

    model_config = ConfigDict(frozen=True)

    seq: int
    entry_id: str
    recorded_at: datetime
    kind: str
    debit: str
    credit: str
    amount: float
    amount_mt: int
    task_id: str | None
    node_id: str | None
    copro_id: str | None
    memo: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, entry: LedgerEntry) -> LedgerEntryOut:
        return cls(
            seq=entry.seq,
            entry_id=entry.entry_id,
            recorded_at=entry.recorded_at,
            kind=entry.kind,
            debit=entry.debit,
            credit=entry.credit,
            amount=tokens(entry.amount_mt),
            amount_mt=entry.amount_mt,
            task_id=entry.task_id,
            node_id=entry.node_id,
            copro_id=entry.copro_id,
            memo=entry.memo,
            hash=entry.hash,
        )


class NodeBalanceOut(BaseModel):
    """`GET /mcp/v1/grid/nodes/{id}/balance`: balance and escrow in tokens, entries newest first.

    `next_before_seq`: pass it as `before_seq` for the next page (null on the last one).
    """

    node_id: str
    balance: float
    escrow: float
    entries: list[LedgerEntryOut]
    next_before_seq: int | None

    @classmethod
    def of(cls, accounts: NodeAccounts, page: EntryPage) -> NodeBalanceOut:
        entries = list(accounts.entries)
        more = len(entries) == page.limit
        return cls(
            node_id=accounts.node_id,
            balance=tokens(accounts.balance_mt),
            escrow=tokens(accounts.escrow_mt),
            entries=[LedgerEntryOut.of(e) for e in entries],
            next_before_seq=entries[-1].seq if more and entries else None,
        )


class SolidarityFundOut(BaseModel):
    """`GET /mcp/v1/grid/solidarity-fund`: its balance and inflows by kind in tokens, and the CO2
    (kg) its CO2 credits stand for."""

    balance: float
    inflows: dict[str, float]
    co2_saved_kg: float

    @classmethod
    def of(cls, fund: FundFigures) -> SolidarityFundOut:
        inflows = {kind: 0.0 for kind in FUND_INFLOW_KINDS}
        inflows.update({kind: tokens(mt) for kind, mt in sorted(fund.inflows_mt.items())})
        return cls(
            balance=tokens(fund.balance_mt),
            inflows=inflows,
            co2_saved_kg=fund.co2_saved_grams / 1000,
        )


class LedgerHeadOut(BaseModel):
    seq: int
    hash: str | None


class LedgerVerifyOut(BaseModel):
    """`GET /mcp/v1/grid/ledger/verify`: `token_chain.ChainReport.as_json()` and the key the heads
    were checked with. `ok` false names the first entry (or head) that breaks (`broken_at`, `reason`)."""

    ok: bool
    entries: int
    signed_heads: int
    head: LedgerHeadOut | None
    balances_sum_tokens: float
    broken_at: int | None
    reason: str | None
    ledger_public_key: str | None
