"""The token ledger and the grid nodes on PostgreSQL (migration 0007_token_ledger).

`PostgresTokenLedger` and `PostgresGridNodes` work on the projection's open transaction (their
errors translated as the projection's are); `PostgresLedgerHeads` on the pool, one short
transaction per call, for the head signer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import asyncpg

from koprogo_ledger.domain.errors import LedgerKeyError
from koprogo_ledger.domain.ledger_chain import ChainTip
from koprogo_ledger.service_layer.ports import GridNodes, LedgerHeads, TokenLedger
from koprogo_shared.task_events import NodeTrustChanged, TaskVerification
from koprogo_shared.token_chain import ENTRY_FIELDS

# Any constant every ledger shares; this one spells "KOPRTOKN" in ASCII.
TOKEN_LEDGER_LOCK_KEY = 0x4B4F5052544F4B4E

_COLUMNS = (*ENTRY_FIELDS, "hash")
_INSERT_ENTRY = (
    f"INSERT INTO grid_ledger_entries ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})"
)
_TIP = "SELECT seq, hash FROM grid_ledger_entries ORDER BY seq DESC LIMIT 1"
_BALANCES = """
SELECT a.account,
       COALESCE((SELECT sum(amount_mt) FROM grid_ledger_entries WHERE credit = a.account), 0)
     - COALESCE((SELECT sum(amount_mt) FROM grid_ledger_entries WHERE debit = a.account), 0) AS balance_mt
FROM unnest($1::text[]) AS a(account)
"""

# Verdicts that are final (a replica still pending is not counted yet).
_DECIDED = ("valid", "invalid", "unchecked", "flagged", "refused", "lost")
# A verdict already recorded is replaced by a later decision's (a re-check judges it again).
_RECORD_REPLICA = """
INSERT INTO grid_task_replicas AS r (task_id, attempt, node_id, owner, verdict, trusted, flagged, decided_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (task_id, attempt) DO UPDATE SET
    verdict = EXCLUDED.verdict, flagged = EXCLUDED.flagged, decided_at = EXCLUDED.decided_at
WHERE r.decided_at <= EXCLUDED.decided_at
"""
_NODE_SEEN = """
INSERT INTO grid_nodes (node_id, owner, trusted, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (node_id) DO NOTHING
"""
_RECOUNT = """
UPDATE grid_nodes AS n SET
    validated  = c.validated,
    invalid    = c.invalid,
    refused    = c.refused,
    flagged    = c.flagged,
    updated_at = GREATEST(n.updated_at, $2)
FROM (
    SELECT count(*) FILTER (WHERE verdict = 'valid') AS validated,
           count(*) FILTER (WHERE verdict = 'invalid') AS invalid,
           count(*) FILTER (WHERE verdict = 'refused') AS refused,
           count(*) FILTER (WHERE flagged) AS flagged
    FROM grid_task_replicas WHERE node_id = $1
) AS c
WHERE n.node_id = $1
"""
_TRUST = """
INSERT INTO grid_nodes AS n (node_id, owner, trusted, valid_streak, last_reason, trust_changed_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $6)
ON CONFLICT (node_id) DO UPDATE SET
    owner = EXCLUDED.owner, trusted = EXCLUDED.trusted, valid_streak = EXCLUDED.valid_streak,
    last_reason = EXCLUDED.last_reason, trust_changed_at = EXCLUDED.trust_changed_at,
    updated_at = GREATEST(n.updated_at, EXCLUDED.updated_at)
WHERE n.trust_changed_at IS NULL OR n.trust_changed_at <= EXCLUDED.trust_changed_at
"""


class PostgresTokenLedger(TokenLedger):
    """On the connection `db()` returns: the unit of work's, inside its transaction."""

    def __init__(
        self,
        db: Callable[[], asyncpg.Connection],
        translated: Callable[[], AbstractContextManager[None]],
        inserted: Callable[[list[dict[str, Any]]], None] = lambda _rows: None,
    ) -> None:
        """`inserted` is told of the rows each insert wrote (the unit of work's, kept until commit)."""
        self._conn = db
        self._translated = translated
        self._inserted = inserted

    async def lock(self) -> None:
        with self._translated():
            await self._conn().execute("SELECT pg_advisory_xact_lock($1)", TOKEN_LEDGER_LOCK_KEY)

    async def tip(self) -> ChainTip:
        with self._translated():
            row = await self._conn().fetchrow(_TIP)
        return ChainTip() if row is None else ChainTip(int(row["seq"]), str(row["hash"]))

    async def known_entries(self, entry_ids: list[str]) -> set[str]:
        with self._translated():
            rows = await self._conn().fetch(
                "SELECT entry_id FROM grid_ledger_entries WHERE entry_id = ANY($1::text[])", entry_ids
            )
        return {str(row["entry_id"]) for row in rows}

    async def balances(self, accounts: list[str]) -> dict[str, int]:
        with self._translated():
            rows = await self._conn().fetch(_BALANCES, accounts)
        return {str(row["account"]): int(row["balance_mt"]) for row in rows}

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        with self._translated():
            await self._conn().executemany(_INSERT_ENTRY, [tuple(row[c] for c in _COLUMNS) for row in rows])
        self._inserted(rows)


class PostgresGridNodes(GridNodes):
    def __init__(
        self, db: Callable[[], asyncpg.Connection], translated: Callable[[], AbstractContextManager[None]]
    ) -> None:
        self._conn = db
        self._translated = translated

    async def record_replicas(self, task_id: uuid.UUID, verification: TaskVerification, at: datetime) -> None:
        decided = [r for r in verification.replicas if r.verdict in _DECIDED]
        with self._translated():
            conn = self._conn()
            for replica in decided:
                await conn.execute(_NODE_SEEN, replica.node_id, replica.owner, replica.trusted, at)
                await conn.execute(
                    _RECORD_REPLICA,
                    task_id,
                    replica.attempt,
                    replica.node_id,
                    replica.owner,
                    replica.verdict,
                    replica.trusted,
                    bool(replica.flags) or replica.verdict == "flagged",
                    at,
                )
            for node in sorted({r.node_id for r in decided}):
                await conn.execute(_RECOUNT, node, at)

    async def record_trust(self, event: NodeTrustChanged) -> None:
        with self._translated():
            await self._conn().execute(
                _TRUST,
                event.node_id,
                event.owner,
                event.trusted,
                event.valid_streak,
                event.reason,
                event.time,
            )


class PostgresLedgerHeads(LedgerHeads):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def tip(self) -> ChainTip:
        row = await self._pool.fetchrow(_TIP)
        return ChainTip() if row is None else ChainTip(int(row["seq"]), str(row["hash"]))

    async def last_signed_seq(self) -> int:
        return int(await self._pool.fetchval("SELECT COALESCE(max(seq), 0) FROM grid_ledger_heads"))

    async def insert_head(
        self, seq: int, hash_: str, signed_at: datetime, signer: str, signature: str
    ) -> bool:
        inserted = await self._pool.fetchval(
            "INSERT INTO grid_ledger_heads (seq, hash, signed_at, signer, signature) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (seq) DO NOTHING RETURNING true",
            seq,
            hash_,
            signed_at,
            signer,
            signature,
        )
        return bool(inserted)

    async def register_key(self, public_key: str, at: datetime) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialised with the appenders: no head is signed between the check and the write.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", TOKEN_LEDGER_LOCK_KEY)
            recorded = await conn.fetchval("SELECT public_key FROM grid_ledger_keys")
            if recorded == public_key:
                return
            if recorded is not None:
                other = await conn.fetchval(
                    "SELECT signer FROM grid_ledger_heads WHERE signer <> $1 ORDER BY seq DESC LIMIT 1",
                    public_key,
                )
                if other is not None:
                    raise LedgerKeyError(
                        f"the token ledger's heads are signed with {recorded}, this ledger's key is "
                        f"{public_key}: start it with that key's seed (LEDGER_SIGNING_SEED_FILE), or "
                        "heads signed from now on would not verify"
                    )
            await conn.execute(
                "INSERT INTO grid_ledger_keys (one, public_key, since) VALUES (true, $1, $2)"
                " ON CONFLICT (one) DO UPDATE SET public_key = EXCLUDED.public_key, since = EXCLUDED.since",
                public_key,
                at,
            )
