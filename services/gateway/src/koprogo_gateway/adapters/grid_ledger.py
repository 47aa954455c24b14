"""The grid's token ledger, read-only (the ledger service owns the schema, migration 0007_token_ledger):
a port, its PostgreSQL adapter and an in-memory fake.

Tables read: `grid_nodes` (each node's standing), `grid_ledger_entries` (the hash-chained
entries), `grid_ledger_heads` (the ledger's signed heads), `grid_ledger_keys` (its public keys)
and the view `grid_account_balances`.

`chain()` is a snapshot of the whole chain for `token_chain.verify_chain` and `export_lines`,
which take plain (blocking) iterables: the PostgreSQL adapter reads the entries and heads
through server-side cursors, a batch at a time, in one REPEATABLE READ transaction (a head
signed while the chain is read is not seen without its entries), so that millions of rows are
never loaded at once. Its iterables fetch each batch on the event loop and block the thread that
iterates them: iterate them in a worker thread (`asyncio.to_thread`), never on the loop.
"""

from __future__ import annotations

import abc
import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg

from koprogo_gateway.domain.errors import GridLedgerUnavailableError
from koprogo_gateway.domain.grid_view import (
    FUND_ACCOUNT,
    EntryPage,
    FundFigures,
    LedgerEntry,
    NodeAccounts,
    NodeStanding,
    escrow_account,
    node_account,
)
from koprogo_shared.token_chain import ENTRY_FIELDS

_ENTRY_COLUMNS = ", ".join((*ENTRY_FIELDS, "hash"))
_HEAD_COLUMNS = "seq, hash, signed_at, signer, signature"
_NODES = """
SELECT n.node_id, n.owner, n.trusted, n.valid_streak, n.validated, n.invalid, n.refused, n.flagged,
       n.updated_at,
       COALESCE((SELECT b.balance_mt FROM grid_account_balances b WHERE b.account = 'node:' || n.node_id), 0)
           ::bigint AS balance_mt,
       COALESCE((SELECT b.balance_mt FROM grid_account_balances b WHERE b.account = 'escrow:' || n.node_id), 0)
           ::bigint AS escrow_mt
FROM grid_nodes n
{where}
ORDER BY n.node_id
"""
_NODE_KNOWN = """
SELECT EXISTS (SELECT 1 FROM grid_nodes WHERE node_id = $1)
    OR EXISTS (SELECT 1 FROM grid_ledger_entries WHERE debit = ANY($2::text[]))
    OR EXISTS (SELECT 1 FROM grid_ledger_entries WHERE credit = ANY($2::text[]))
"""
_BALANCES = "SELECT account, balance_mt::bigint AS balance_mt FROM grid_account_balances WHERE account = ANY($1::text[])"
_FUND_INFLOWS = """
SELECT kind, sum(amount_mt)::bigint AS amount_mt,
       COALESCE(sum((memo->>'co2_saved_grams')::double precision) FILTER (WHERE kind = 'co2_credit'), 0)
           ::double precision AS co2_saved_grams
FROM grid_ledger_entries WHERE credit = $1 GROUP BY kind
"""
# The key the heads are checked with: the newest (the ledger records when each came into use).
_PUBLIC_KEY = "SELECT public_key FROM grid_ledger_keys ORDER BY since DESC LIMIT 1"
# The client waits this much longer than the server's statement timeout (as the stats do).
_CLIENT_MARGIN_S = 2.0
# Rows per FETCH from a chain's cursors.
CHAIN_BATCH = 1000


@dataclass
class ChainSnapshot:
    """The whole chain at one moment: `entries` and `heads` in seq order (as `token_chain` takes
    them) and the ledger's public key (None when the ledger has recorded none)."""

    public_key: str | None
    entries: Iterable[Mapping[str, Any]]
    heads: Iterable[Mapping[str, Any]]


class GridLedger(abc.ABC):
    """Read-only access to the token ledger; every method raises GridLedgerUnavailableError (503)
    when PostgreSQL cannot answer, or not within the statement timeout."""

    @abc.abstractmethod
    async def nodes(self, node_ids: Sequence[str] | None) -> list[NodeStanding]:
        """Every node the ledger knows (None), or those of `node_ids` it knows, by id."""

    @abc.abstractmethod
    async def node_accounts(self, node_id: str, page: EntryPage) -> NodeAccounts | None:
        """The node's balance, escrow and a page of the entries touching either; None for a node the
        ledger has never heard of."""

    @abc.abstractmethod
    async def solidarity_fund(self) -> FundFigures:
        """The fund's balance, what credited it by kind, and the CO2 its CO2 credits stand for."""

    @abc.abstractmethod
    async def public_key(self) -> str | None:
        """The ledger's (newest) public key; None when it has recorded none."""

    @abc.abstractmethod
    def chain(self) -> AbstractAsyncContextManager[ChainSnapshot]:
        """The chain as one snapshot, valid inside the context (see the module's docstring)."""


class PostgresGridLedger(GridLedger):
    def __init__(
        self, pool: asyncpg.Pool, *, statement_timeout_s: float = 10.0, batch: int = CHAIN_BATCH
    ) -> None:
        self._pool = pool
        self._timeout_s = statement_timeout_s
        self._batch = batch

    async def nodes(self, node_ids: Sequence[str] | None) -> list[NodeStanding]:
        async with self._reading() as conn:
            if node_ids is None:
                rows = await conn.fetch(_NODES.format(where=""), timeout=self._client_timeout)
            else:
                sql = _NODES.format(where="WHERE n.node_id = ANY($1::text[])")
                rows = await conn.fetch(sql, list(node_ids), timeout=self._client_timeout)
        return [_standing(row) for row in rows]

    async def node_accounts(self, node_id: str, page: EntryPage) -> NodeAccounts | None:
        accounts = [node_account(node_id), escrow_account(node_id)]
        args: list[Any] = [accounts]
        before = ""
        if page.before_seq is not None:
            args.append(page.before_seq)
            before = f" AND seq < ${len(args)}"
        args.append(page.limit)
        entries_sql = (
            f"SELECT {_ENTRY_COLUMNS} FROM grid_ledger_entries "
            f"WHERE (debit = ANY($1::text[]) OR credit = ANY($1::text[])){before} "
            f"ORDER BY seq DESC LIMIT ${len(args)}"
        )
        timeout = self._client_timeout
        async with self._reading() as conn:
            if not await conn.fetchval(_NODE_KNOWN, node_id, accounts, timeout=timeout):
                return None
            balances = {
                row["account"]: int(row["balance_mt"])
                for row in await conn.fetch(_BALANCES, accounts, timeout=timeout)
            }
            rows = await conn.fetch(entries_sql, *args, timeout=timeout)
        return NodeAccounts(
            node_id=node_id,
            balance_mt=balances.get(accounts[0], 0),
            escrow_mt=balances.get(accounts[1], 0),
            entries=tuple(_ledger_entry(chain_entry(row)) for row in rows),
        )

    async def solidarity_fund(self) -> FundFigures:
        timeout = self._client_timeout
        async with self._reading() as conn:
            balance = await conn.fetchval(
                "SELECT balance_mt::bigint FROM grid_account_balances WHERE account = $1",
                FUND_ACCOUNT,
                timeout=timeout,
            )
            rows = await conn.fetch(_FUND_INFLOWS, FUND_ACCOUNT, timeout=timeout)
        return FundFigures(
            balance_mt=int(balance or 0),
            inflows_mt={row["kind"]: int(row["amount_mt"]) for row in rows},
            co2_saved_grams=sum(float(row["co2_saved_grams"]) for row in rows),
        )

    async def public_key(self) -> str | None:
        async with self._reading() as conn:
            key = await conn.fetchval(_PUBLIC_KEY, timeout=self._client_timeout)
        return None if key is None else str(key)

    @asynccontextmanager
    async def chain(self) -> AsyncIterator[ChainSnapshot]:
        loop = asyncio.get_running_loop()
        async with self._reading(isolation="repeatable_read") as conn:
            key = await conn.fetchval(_PUBLIC_KEY, timeout=self._client_timeout)
            entries = _CursorRows(
                conn,
                f"SELECT {_ENTRY_COLUMNS} FROM grid_ledger_entries ORDER BY seq",
                chain_entry,
                loop,
                self._batch,
                self._client_timeout,
            )
            heads = _CursorRows(
                conn,
                f"SELECT {_HEAD_COLUMNS} FROM grid_ledger_heads ORDER BY seq",
                chain_head,
                loop,
                self._batch,
                self._client_timeout,
            )
            try:
                yield ChainSnapshot(None if key is None else str(key), entries, heads)
            finally:
                # A worker thread still iterating (its caller gone) stops at its next batch.
                entries.closed = heads.closed = True

    @property
    def _client_timeout(self) -> float:
        return self._timeout_s + _CLIENT_MARGIN_S

    @asynccontextmanager
    async def _reading(self, isolation: str = "read_committed") -> AsyncIterator[asyncpg.Connection]:
        """A connection in a read-only transaction whose every statement PostgreSQL stops after
        the statement timeout; the errors translated into GridLedgerUnavailableError."""
        timeout_s = self._timeout_s
        try:
            async with (
                self._pool.acquire(timeout=timeout_s) as conn,
                conn.transaction(readonly=True, isolation=isolation),
            ):
                await conn.execute(f"SET LOCAL statement_timeout = {max(1, round(timeout_s * 1000))}")
                yield conn
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            raise GridLedgerUnavailableError(
                "the token ledger cannot be read yet: the ledger has not created its tables "
                "(migration 0007_token_ledger)"
            ) from None
        except asyncpg.QueryCanceledError:
            raise GridLedgerUnavailableError(
                f"reading the token ledger took longer than {timeout_s:g}s and was stopped"
            ) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise GridLedgerUnavailableError(
                f"the token ledger's database is unavailable ({type(exc).__name__})"
            ) from None


class _CursorRows:
    """A query's rows through a server-side cursor, as a blocking iterable for a worker thread:
    each batch is fetched on the event loop (`loop`), which stays free meanwhile."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        sql: str,
        convert: Callable[[asyncpg.Record], dict[str, Any]],
        loop: asyncio.AbstractEventLoop,
        batch: int,
        timeout_s: float,
    ) -> None:
        self._conn = conn
        self._sql = sql
        self._convert = convert
        self._loop = loop
        self._batch = batch
        self._timeout_s = timeout_s
        self.closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("the ledger's chain blocks while it reads: iterate it in asyncio.to_thread")
        cursor = self._run(self._open)
        while True:
            rows = self._run(lambda: cursor.fetch(self._batch, timeout=self._timeout_s))
            for row in rows:
                yield self._convert(row)
            if len(rows) < self._batch:
                return

    async def _open(self) -> asyncpg.cursor.Cursor[asyncpg.Record]:
        return await self._conn.cursor(self._sql)

    def _run(self, step: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        if self.closed:
            raise GridLedgerUnavailableError("the ledger's snapshot was closed while it was read")
        return asyncio.run_coroutine_threadsafe(step(), self._loop).result()


def _text(value: Any) -> Any:
    """UUIDs as their text (as the ledger hashed them); anything else as it is."""
    return str(value) if isinstance(value, uuid.UUID) else value


def chain_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """An entry row as `token_chain` takes it: its hashed fields (memo as a JSON object) and `hash`."""
    entry = {name: _text(row[name]) for name in (*ENTRY_FIELDS, "hash")}
    if isinstance(entry["memo"], str):
        entry["memo"] = json.loads(entry["memo"])
    entry["seq"] = int(entry["seq"])
    entry["amount_mt"] = int(entry["amount_mt"])
    return entry


def chain_head(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _text(row[name]) for name in ("seq", "hash", "signed_at", "signer", "signature")}


def _ledger_entry(entry: Mapping[str, Any]) -> LedgerEntry:
    memo = entry.get("memo")
    return LedgerEntry(
        seq=int(entry["seq"]),
        entry_id=str(entry["entry_id"]),
        recorded_at=entry["recorded_at"],
        debit=str(entry["debit"]),
        credit=str(entry["credit"]),
        amount_mt=int(entry["amount_mt"]),
        kind=str(entry["kind"]),
        task_id=None if entry.get("task_id") is None else str(entry["task_id"]),
        node_id=entry.get("node_id"),
        copro_id=entry.get("copro_id"),
        memo=dict(memo) if isinstance(memo, Mapping) else {},
        hash=str(entry["hash"]),
    )


def _standing(row: asyncpg.Record) -> NodeStanding:
    return NodeStanding(
        node_id=row["node_id"],
        owner=row["owner"],
        trusted=bool(row["trusted"]),
        valid_streak=int(row["valid_streak"]),
        validated=int(row["validated"]),
        invalid=int(row["invalid"]),
        refused=int(row["refused"]),
        flagged=int(row["flagged"]),
        updated_at=row["updated_at"],
        balance_mt=int(row["balance_mt"]),
        escrow_mt=int(row["escrow_mt"]),
    )


@dataclass
class FakeGridLedger(GridLedger):
    """In memory: `standings` as `grid_nodes` holds them (their balances are computed from the
    entries), `entries` and `heads` as the ledger would have written them (chain dicts)."""

    standings: dict[str, NodeStanding] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    heads: list[dict[str, Any]] = field(default_factory=list)
    key: str | None = None
    # Set to make every read fail as an unreachable database does.
    unavailable: bool = False

    def balance(self, account: str) -> int:
        credits = sum(e["amount_mt"] for e in self.entries if e["credit"] == account)
        return credits - sum(e["amount_mt"] for e in self.entries if e["debit"] == account)

    async def nodes(self, node_ids: Sequence[str] | None) -> list[NodeStanding]:
        self._check()
        return [
            replace(
                node,
                balance_mt=self.balance(node_account(node.node_id)),
                escrow_mt=self.balance(escrow_account(node.node_id)),
            )
            for node_id, node in sorted(self.standings.items())
            if node_ids is None or node_id in node_ids
        ]

    async def node_accounts(self, node_id: str, page: EntryPage) -> NodeAccounts | None:
        self._check()
        accounts = {node_account(node_id), escrow_account(node_id)}
        touching = [e for e in self.entries if e["debit"] in accounts or e["credit"] in accounts]
        if node_id not in self.standings and not touching:
            return None
        newest = sorted(touching, key=lambda e: e["seq"], reverse=True)
        if page.before_seq is not None:
            newest = [e for e in newest if e["seq"] < page.before_seq]
        return NodeAccounts(
            node_id=node_id,
            balance_mt=self.balance(node_account(node_id)),
            escrow_mt=self.balance(escrow_account(node_id)),
            entries=tuple(_ledger_entry(e) for e in newest[: page.limit]),
        )

    async def solidarity_fund(self) -> FundFigures:
        self._check()
        inflows: dict[str, int] = {}
        co2 = 0.0
        for entry in self.entries:
            if entry["credit"] != FUND_ACCOUNT:
                continue
            inflows[entry["kind"]] = inflows.get(entry["kind"], 0) + entry["amount_mt"]
            if entry["kind"] == "co2_credit":
                co2 += float((entry.get("memo") or {}).get("co2_saved_grams", 0))
        return FundFigures(self.balance(FUND_ACCOUNT), inflows, co2)

    async def public_key(self) -> str | None:
        self._check()
        return self.key

    @asynccontextmanager
    async def chain(self) -> AsyncIterator[ChainSnapshot]:
        self._check()
        yield ChainSnapshot(self.key, list(self.entries), list(self.heads))

    def _check(self) -> None:
        if self.unavailable:
            raise GridLedgerUnavailableError("the token ledger's database is unavailable (fake)")
