"""The grid rewards the ledger counts for Prometheus: the token ledger's earning movements, by kind
of account credited, once committed, and never those of a savepoint undone or a transaction not
committed (real PostgreSQL, the real unit of work)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.adapters.postgres_projection import PostgresProjectionUnitOfWork
from koprogo_ledger.domain.rewards import Movement
from koprogo_ledger.entrypoints.metrics import count_committed
from koprogo_ledger.service_layer.grid_accounts import append_movements
from koprogo_ledger.service_layer.projection import project_batch
from koprogo_shared.content_crypto import Keyring
from tests.conftest import TEST_CONTENT_KEYS
from tests.integration.test_token_ledger import T0, scenario

pytestmark = pytest.mark.integration

KEYRING = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        yield pool
    finally:
        await pool.close()


def _rewards(account: str) -> float:
    return REGISTRY.get_sample_value("koprogo_ledger_grid_rewards_tokens_total", {"account": account}) or 0.0


async def test_a_run_counts_what_each_kind_of_account_earned_and_no_node_id(pool: asyncpg.Pool) -> None:
    before = {kind: _rewards(kind) for kind in ("node", "escrow", "solidarity_fund")}
    events, _ = scenario()

    outcomes = await project_batch(events, PostgresProjectionUnitOfWork(pool, KEYRING, count_committed))

    assert not [o for o in outcomes if isinstance(o, Exception)]
    # test_token_ledger's worked amounts (mt): pi-a paid directly once after C's check (558);
    # escrow A 2 x 558, B 2 x 36,990, D, C's pi-b and E's pi-c 558 each; the fund's shares
    # (8,592) and B's CO2 credit (5,000). Escrow releases and forfeits earn nothing new.
    earned = {kind: _rewards(kind) - before[kind] for kind in before}
    assert earned == pytest.approx({"node": 0.558, "escrow": 76.770, "solidarity_fund": 13.592})
    labels = {s.labels.get("account") for m in REGISTRY.collect() for s in m.samples}
    assert not any(str(a).startswith(("pi-", "node:", "escrow:")) for a in labels)


async def test_rows_of_an_undone_savepoint_or_an_uncommitted_transaction_are_not_counted(
    pool: asyncpg.Pool,
) -> None:
    counted: list[dict[str, Any]] = []

    def record(entries: Sequence[dict[str, Any]]) -> None:
        counted.extend(entries)

    def move(entry_id: str) -> Movement:
        return Movement(entry_id, "copro:c1", "node:pi-x", 1_000, "reward", node_id="pi-x")

    uow = PostgresProjectionUnitOfWork(pool, KEYRING, record)
    async with uow:
        await uow.token_ledger.lock()
        with contextlib.suppress(RuntimeError):
            async with uow.savepoint():
                await append_movements(uow.token_ledger, [move("undone")], T0)
                raise RuntimeError("this event fails: its savepoint is undone")
        await append_movements(uow.token_ledger, [move("kept")], T0)
        await uow.commit()
    async with uow:
        await append_movements(uow.token_ledger, [move("never committed")], T0)

    assert [row["entry_id"] for row in counted] == ["kept"]
