"""The token ledger on the real PostgreSQL (and the real ledger over NATS JetStream): tasks verified
by quorum pay their nodes' escrow and the solidarity fund, earned trust releases an escrow, a
caught node forfeits its own, flagged and invalid replicas earn nothing; the chain and its signed
heads verify, redelivery changes nothing, and tampering in PostgreSQL is refused or detected."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.adapters.postgres_projection import PostgresProjectionUnitOfWork
from koprogo_ledger.adapters.postgres_token_ledger import PostgresLedgerHeads
from koprogo_ledger.domain.errors import LedgerKeyError
from koprogo_ledger.service_layer.ledger_heads import sign_head
from koprogo_ledger.service_layer.projection import LedgerEvent, Projected, project
from koprogo_shared import subjects
from koprogo_shared.content_crypto import Keyring
from koprogo_shared.grid_signing import load_or_create_signer
from koprogo_shared.publishing import publish_event
from koprogo_shared.task_events import (
    DocumentRef,
    NodeTrustChanged,
    ReplicaRecord,
    TaskAssigned,
    TaskCompleted,
    TaskSubmitted,
    TaskType,
    TaskUsage,
    TaskVerification,
    TaskVerifying,
    task_event_id,
)
from koprogo_shared.token_chain import entry_hash, verify_chain
from tests.conftest import TEST_CONTENT_KEYS, wait_until
from tests.integration.ledger_support import LedgerUnderTest, running_ledger

pytestmark = pytest.mark.integration

SCHEDULER = "koprogo/grid-scheduler"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FUND = "fund:solidarity"
DOCUMENT = b"%PDF-1.4 " + b"Facture Vivaqua 2026-02 total 312,40 EUR " * 2_498  # 100 KiB + a little
DOCUMENT = DOCUMENT[: 100 * 1024]  # exactly 100 KiB: 20 mt of the formula


class GridTask:
    """A task's events as the gateway and the scheduler publish them, with its verification."""

    def __init__(self, copro_id: str, task_type: TaskType, *, at: float, document: bool = True) -> None:
        # The same task each time `scenario()` is built (each test has its own database).
        self.id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"koprogo-test:{copro_id}:{task_type}:{at}"))
        self.copro_id = copro_id
        self.task_type: TaskType = task_type
        self.at = T0 + timedelta(seconds=at)
        self.document = document

    def submitted(self) -> TaskSubmitted:
        ref = None
        if self.document:
            ref = DocumentRef(object_name=f"tasks/{self.id}", sha256=hashlib.sha256(DOCUMENT).hexdigest(),
                              size=len(DOCUMENT), content_type="application/pdf", filename="facture.pdf")  # fmt: skip
        return TaskSubmitted(
            id=self.id, source="tests/gateway", time=self.at, copro_id=self.copro_id, task_type=self.task_type,
            parameters={"language": "fr"}, document=ref, user_id="alice", expires_at=self.at + timedelta(hours=1),
        )  # fmt: skip

    def assigned(self, attempt: int, node: str) -> TaskAssigned:
        return TaskAssigned(
            id=task_event_id(self.id, f"assigned:{attempt}"), source=SCHEDULER, time=self.at + timedelta(seconds=attempt),
            copro_id=self.copro_id, task_id=self.id, task_type=self.task_type, attempt=attempt, node_id=node,
            deadline=self.at + timedelta(minutes=10),
        )  # fmt: skip

    def verification(self, policy: str, replicas: list[ReplicaRecord], outcome: str) -> TaskVerification:
        return TaskVerification.model_validate({
            "policy": policy, "quorum": 2 if policy != "trusted" else 1, "max_replicas": 4,
            "replicas": [r.model_dump() for r in replicas], "outcome": outcome,
            "agreement": sum(1 for r in replicas if r.verdict == "valid"),
        })  # fmt: skip

    def verifying(self, policy: str, replicas: list[ReplicaRecord]) -> TaskVerifying:
        return TaskVerifying(
            id=task_event_id(self.id, f"verifying:{len(replicas)}"), source=SCHEDULER,
            time=self.at + timedelta(seconds=30), copro_id=self.copro_id, task_id=self.id,
            verification=self.verification(policy, replicas, "pending"),
        )  # fmt: skip

    def completed(self, policy: str, replicas: list[ReplicaRecord], *, tokens: int = 0, co2_grams: float = 0.01) -> TaskCompleted:  # fmt: skip
        accepted = next(r for r in replicas if r.verdict in ("valid", "unchecked"))
        return TaskCompleted(
            id=task_event_id(self.id, "completed"), source=SCHEDULER, time=self.at + timedelta(seconds=60),
            copro_id=self.copro_id, task_id=self.id, task_type=self.task_type, attempt=accepted.attempt,
            node_id=accepted.node_id, result={"total": "312.40"}, usage=accepted.usage or usage(tokens, 10.0),
            co2_grams=co2_grams,
            verification=self.verification(policy, replicas, "accepted_unchecked" if policy == "trusted" else "accepted"),
        )  # fmt: skip


def usage(tokens: int, seconds: float) -> TaskUsage:
    return TaskUsage(prompt_tokens=tokens // 4, completion_tokens=tokens - tokens // 4, duration_s=seconds)


def replica(
    attempt: int, node: str, verdict: str = "valid", *, trusted: bool = False, flags: tuple[str, ...] = (),
    tokens: int = 0, seconds: float = 10.0,
) -> ReplicaRecord:  # fmt: skip
    return ReplicaRecord.model_validate({
        "attempt": attempt, "node_id": node, "owner": f"owner-{node}", "trusted": trusted, "verdict": verdict,
        "result_digest": "0" * 64, "agreement_key": "k" if verdict == "valid" else "other",
        "usage": usage(tokens, seconds).model_dump(), "co2_grams": 0.005, "flags": list(flags),
    })  # fmt: skip


def trust(node: str, reason: str, *, trusted: bool, at: float, task_id: str) -> NodeTrustChanged:
    return NodeTrustChanged.model_validate({
        "id": task_event_id(task_id, f"trust:{node}:{reason}"), "source": SCHEDULER,
        "time": T0 + timedelta(seconds=at), "node_id": node, "owner": f"owner-{node}", "trusted": trusted,
        "reason": reason, "task_id": task_id, "valid_streak": 5 if trusted else 0, "validated": 5, "invalid": 0,
    })  # fmt: skip


def scenario() -> tuple[list[LedgerEvent], dict[str, GridTask]]:
    """A realistic run (amounts in docs/grid-rewards.md's defaults, worked out in the test below).

    A: OCR, untrusted pi-a and pi-b agree (escrow). B: a summary, pi-a and pi-c agree, pi-lazy's
    garbage is invalid; the CO2 saved is credited. pi-a earns trust (escrow released). D: trusted
    pi-a unchecked (escrow). C: pi-a spot-checked with pi-b (paid directly, D's escrow released).
    E: pi-c and a flagged pi-d agree, pi-b disagrees; pi-b is caught (its escrow forfeited);
    pi-lazy's attestation is implausible (no movement).
    """
    a = GridTask("copro-a", "ocr_invoice", at=0)
    b = GridTask("copro-b", "summarize_meeting", at=100, document=False)
    d = GridTask("copro-a", "ocr_invoice", at=200)
    c = GridTask("copro-a", "ocr_invoice", at=300)
    e = GridTask("copro-a", "ocr_invoice", at=400)
    a_replicas = [replica(1, "pi-a"), replica(2, "pi-b")]
    b_replicas = [
        replica(1, "pi-a", tokens=200_000, seconds=60.0),
        replica(2, "pi-lazy", "invalid", tokens=10, seconds=0.5),
        replica(3, "pi-c", tokens=200_000, seconds=60.0),
    ]
    events: list[LedgerEvent] = [
        a.submitted(), a.assigned(1, "pi-a"), a.assigned(2, "pi-b"),
        a.verifying("quorum", [a_replicas[0], replica(2, "pi-b", "pending")]),
        a.completed("quorum", a_replicas),
        b.submitted(), b.assigned(1, "pi-a"), b.assigned(2, "pi-lazy"), b.assigned(3, "pi-c"),
        b.completed("quorum", b_replicas, tokens=200_000, co2_grams=10.0),
        trust("pi-a", "earned", trusted=True, at=170, task_id=b.id),
        d.submitted(), d.assigned(1, "pi-a"),
        d.completed("trusted", [replica(1, "pi-a", "unchecked", trusted=True)]),
        c.submitted(), c.assigned(1, "pi-a"), c.assigned(2, "pi-b"),
        c.completed("spot_check", [replica(1, "pi-a", trusted=True), replica(2, "pi-b")]),
        e.submitted(), e.assigned(1, "pi-c"), e.assigned(2, "pi-b"), e.assigned(3, "pi-d"),
        e.completed("quorum", [replica(1, "pi-c"), replica(2, "pi-b", "invalid"),
                               replica(3, "pi-d", flags=("energy_below_idle",))]),
        trust("pi-b", "caught_wrong", trusted=False, at=470, task_id=e.id),
        trust("pi-lazy", "implausible_attestation", trusted=False, at=480, task_id=b.id),
    ]  # fmt: skip
    return events, {"A": a, "B": b, "C": c, "D": d, "E": e}


# Worked out by hand from docs/grid-rewards.md (defaults): an OCR replica of 10 s on 100 KiB earns
# 500 + 10 x 10 + 20 = 620 mt (558 to the node, 62 to the fund); a summary replica of 200,000
# tokens in 60 s earns 500 + 40,000 + 600 = 41,100 mt (36,990 + 4,110). B saved 60 - 10 = 50 g of
# CO2: 5,000 mt to the fund. pi-a's escrow after A and B (558 + 36,990) is released when it earns
# trust; D's 558 held in escrow is released when pi-a passes C's spot check. pi-b's escrow (A and
# C: 1,116) is forfeited when it is caught in E.
EXPECTED_BALANCES = {
    "node:pi-a": 37_548 + 558 + 558,
    "escrow:pi-a": 0,
    "escrow:pi-b": 0,
    "escrow:pi-c": 36_990 + 558,
    FUND: 124 + 8_220 + 62 + 124 + 62 + 5_000 + 1_116,
    "copro:copro-a": -(1_240 + 620 + 1_240 + 620),
    "copro:copro-b": -(82_200 + 5_000),
}
EXPECTED_FUND_INFLOWS = {"fund_share": 8_592, "co2_credit": 5_000, "escrow_forfeit": 1_116}


def subject_of(event: LedgerEvent) -> str:
    if isinstance(event, NodeTrustChanged):
        return subjects.grid_node_trust(event.node_id)
    steps = {TaskSubmitted: "submitted", TaskAssigned: "assigned", TaskVerifying: "verifying",
             TaskCompleted: "completed"}  # fmt: skip
    return subjects.task_event(steps[type(event)], event.copro_id)


async def balances(db: asyncpg.Pool | asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT account, balance_mt FROM grid_account_balances")
    return {r["account"]: int(r["balance_mt"]) for r in rows}


async def chain(
    db: asyncpg.Pool | asyncpg.Connection,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    entries = [dict(r) for r in await db.fetch("SELECT * FROM grid_ledger_entries ORDER BY seq")]
    heads = [dict(r) for r in await db.fetch("SELECT * FROM grid_ledger_heads ORDER BY seq")]
    key = await db.fetchval("SELECT public_key FROM grid_ledger_keys")
    return entries, heads, str(key)


async def nodes(db: asyncpg.Pool) -> dict[str, tuple[Any, ...]]:
    rows = await db.fetch("SELECT node_id, trusted, validated, invalid, refused, flagged FROM grid_nodes")
    return {r["node_id"]: tuple(r.values())[1:] for r in rows}


async def publish_again(ledger: LedgerUnderTest, subject: str, event: LedgerEvent) -> None:
    """`event` on `subject` under a new Nats-Msg-Id, so JetStream's de-duplication lets it through."""
    await ledger.js.publish(
        subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": str(uuid.uuid4())}
    )


async def publish_all(ledger: LedgerUnderTest, events: list[LedgerEvent]) -> None:
    for event in events:
        await publish_event(ledger.js, subject_of(event), event)


async def test_a_run_pays_nodes_and_the_fund_balances_to_zero_verifies_and_survives_redelivery(
    database_url: str, clean_jetstream: str, tmp_path: Path
) -> None:
    seed = tmp_path / "ledger-signing.nk"
    signer = load_or_create_signer(seed)
    events, tasks = scenario()
    async with running_ledger(
        database_url, clean_jetstream, ledger_head_interval_s=0.2, ledger_signing_seed_file=seed
    ) as ledger:
        await publish_all(ledger, events[:4])  # task A up to its TaskVerifying
        await wait_until(lambda: ledger.applied(*(e.id for e in events[:4])))
        row = await ledger.db.fetchrow(
            "SELECT status, verification FROM mcp_tasks WHERE id = $1", uuid.UUID(tasks["A"].id)
        )
        assert row["status"] == "verifying"
        await publish_all(ledger, events[4:])
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=30)
        await wait_until(ledger.settled)
        assert await ledger.dead_letters() == []

        assert await balances(ledger.db) == EXPECTED_BALANCES
        assert sum(EXPECTED_BALANCES.values()) == 0
        inflows = await ledger.db.fetch(
            "SELECT kind, sum(amount_mt)::bigint AS mt FROM grid_ledger_entries WHERE credit = $1 GROUP BY kind",
            FUND,
        )
        assert {r["kind"]: r["mt"] for r in inflows} == EXPECTED_FUND_INFLOWS
        co2 = await ledger.db.fetchval(
            "SELECT sum((memo->>'co2_saved_grams')::float) FROM grid_ledger_entries WHERE kind = 'co2_credit'"
        )
        assert co2 == pytest.approx(50.0)
        # Nobody earned from a flagged, invalid or implausible replica.
        paid = {
            r["node_id"] for r in await ledger.db.fetch("SELECT DISTINCT node_id FROM grid_ledger_entries")
        }
        assert paid == {"pi-a", "pi-b", "pi-c", None}
        task_a = await ledger.db.fetchrow(
            "SELECT status, verification FROM mcp_tasks WHERE id = $1", uuid.UUID(tasks["A"].id)
        )
        assert task_a["status"] == "completed"
        assert task_a["verification"]["outcome"] == "accepted"
        assert [r["verdict"] for r in task_a["verification"]["replicas"]] == ["valid", "valid"]

        # trusted, validated, invalid, refused, flagged
        assert await nodes(ledger.db) == {
            "pi-a": (True, 3, 0, 0, 0),
            "pi-b": (False, 2, 1, 0, 0),
            "pi-c": (False, 2, 0, 0, 0),
            "pi-d": (False, 1, 0, 0, 1),
            "pi-lazy": (False, 0, 1, 0, 0),
        }

        entries, _, key = await chain(ledger.db)
        tip = entries[-1]["seq"]
        await wait_until(lambda: ledger.db.fetchval("SELECT max(seq) = $1 FROM grid_ledger_heads", tip))
        entries, heads, key = await chain(ledger.db)
        assert key == signer.public_key
        report = verify_chain(entries, heads, key)
        assert report.ok, report.reason
        assert report.entries == tip and report.balances_sum_mt == 0 and heads[-1]["signer"] == key

        # Every event delivered again (new message ids, so JetStream lets them through): nothing moves.
        before = (await chain(ledger.db))[0], await balances(ledger.db), await nodes(ledger.db)
        for event in events:
            await publish_again(ledger, subject_of(event), event)
        await wait_until(ledger.settled, timeout=30)
        after = (await chain(ledger.db))[0], await balances(ledger.db), await nodes(ledger.db)
        assert after == before

        # Nobody but the scheduler says a node earned trust: on a node's own subject, or on the
        # subject of another node, the change is dead-lettered and pi-c's escrow stays.
        forged = trust("pi-c", "earned", trusted=True, at=600, task_id=tasks["E"].id)
        await publish_again(ledger, subjects.node_task_event("result_reported", "copro-a", "pi-c"), forged)
        await publish_again(ledger, subjects.grid_node_trust("pi-d"), forged)
        await wait_until(lambda: _dead_letters(ledger, 2))
        await wait_until(ledger.settled)
        assert (await balances(ledger.db))["escrow:pi-c"] == EXPECTED_BALANCES["escrow:pi-c"]
        assert not await ledger.applied(forged.id)


async def _dead_letters(ledger: LedgerUnderTest, count: int) -> bool:
    return len(await ledger.dead_letters()) == count


@pytest.fixture
async def projected(database_url: str, tmp_path: Path) -> Any:
    """The scenario projected by the real unit of work (no NATS), heads signed at two points."""
    keyring = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])
    pool = await create_pool(database_url, max_size=3)
    signer = load_or_create_signer(tmp_path / "ledger.nk")
    heads = PostgresLedgerHeads(pool)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        await heads.register_key(signer.public_key, T0)
        events, _ = scenario()
        half = len(events) // 2
        for i, event in enumerate(events):
            assert (
                await project(event, PostgresProjectionUnitOfWork(pool, keyring)) is not Projected.DUPLICATE
            )
            if i in (half, len(events) - 1):
                assert await sign_head(heads, signer, datetime.now(UTC)) is not None
        yield pool
    finally:
        await pool.close()


async def test_the_ledger_refuses_update_delete_and_truncate(projected: asyncpg.Pool) -> None:
    async with projected.acquire() as conn:
        for sql in (
            "UPDATE grid_ledger_entries SET amount_mt = amount_mt + 1 WHERE seq = 2",
            "DELETE FROM grid_ledger_entries WHERE seq = 2",
            "TRUNCATE grid_ledger_entries",
            "UPDATE grid_ledger_heads SET hash = 'x'",
            "DELETE FROM grid_ledger_heads",
            "TRUNCATE grid_ledger_heads",
        ):
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await conn.execute(sql)
        entries, heads, key = await chain(conn)
    assert len(heads) == 2 and verify_chain(entries, heads, key).ok


async def test_an_entry_altered_in_postgresql_is_named_and_a_rewritten_history_is_caught_by_a_signed_head(
    projected: asyncpg.Pool,
) -> None:
    async with projected.acquire() as conn:
        entries, heads, key = await chain(conn)
        assert verify_chain(entries, heads, key).ok
        first_head = heads[0]["seq"]
        target = first_head - 2  # an entry both heads cover
        await conn.execute("ALTER TABLE grid_ledger_entries DISABLE TRIGGER grid_ledger_entries_append_only")
        await conn.execute("UPDATE grid_ledger_entries SET amount_mt = amount_mt * 10 WHERE seq = $1", target)
        await conn.execute("ALTER TABLE grid_ledger_entries ENABLE TRIGGER grid_ledger_entries_append_only")
        entries, heads, key = await chain(conn)
        report = verify_chain(entries, heads, key)
        assert not report.ok and report.broken_at == target
        assert report.reason is not None and "altered" in report.reason

        # A forger who recomputes every hash from there on makes the chain consistent again ...
        await conn.execute("ALTER TABLE grid_ledger_entries DISABLE TRIGGER grid_ledger_entries_append_only")
        prev = entries[target - 2]["hash"]
        for entry in entries[target - 1 :]:
            rewritten = {**entry, "prev_hash": prev}
            rewritten["hash"] = entry_hash(rewritten)
            await conn.execute(
                "UPDATE grid_ledger_entries SET prev_hash = $2, hash = $3 WHERE seq = $1",
                entry["seq"],
                rewritten["prev_hash"],
                rewritten["hash"],
            )
            prev = rewritten["hash"]
        await conn.execute("ALTER TABLE grid_ledger_entries ENABLE TRIGGER grid_ledger_entries_append_only")
        entries, heads, key = await chain(conn)
    assert verify_chain(entries).ok  # ... without the heads, nothing shows
    report = verify_chain(entries, heads, key)
    assert not report.ok and report.broken_at == first_head
    assert report.reason is not None and "history rewritten" in report.reason


async def test_recorded_at_round_trips_exactly_whatever_the_readers_time_zone(
    projected: asyncpg.Pool,
) -> None:
    async with projected.acquire() as conn:
        await conn.execute("SET TIME ZONE 'Pacific/Chatham'")
        entries, heads, key = await chain(conn)
        as_text = await conn.fetch("SELECT seq, recorded_at::text AS t FROM grid_ledger_entries ORDER BY seq")
    assert verify_chain(entries, heads, key).ok
    assert all("+12:45" in r["t"] or "+13:45" in r["t"] for r in as_text)  # the session's zone, not UTC
    assert any(e["recorded_at"].microsecond for e in entries)  # microseconds kept, not truncated


async def test_a_ledger_started_with_another_key_once_heads_exist_is_refused(
    projected: asyncpg.Pool, tmp_path: Path
) -> None:
    other = load_or_create_signer(tmp_path / "other.nk")
    with pytest.raises(LedgerKeyError, match="LEDGER_SIGNING_SEED_FILE"):
        await PostgresLedgerHeads(projected).register_key(other.public_key, datetime.now(UTC))


async def test_two_ledgers_appending_at_once_keep_one_chain_and_the_last_head_is_signed_at_stop(
    database_url: str, clean_jetstream: str, tmp_path: Path
) -> None:
    seed = tmp_path / "ledger-signing.nk"
    signer = load_or_create_signer(seed)
    events: list[LedgerEvent] = []
    nodes_by_task = [("pi-a", "pi-b"), ("pi-b", "pi-c"), ("pi-c", "pi-a")]
    for i in range(30):
        task = GridTask("copro-a" if i % 2 else "copro-b", "ocr_invoice", at=i)
        first, second = nodes_by_task[i % 3]
        events += [task.submitted(), task.completed("quorum", [replica(1, first), replica(2, second)])]
        if i == 15:
            events.append(trust("pi-a", "earned", trusted=True, at=i + 0.5, task_id=task.id))
            events.append(trust("pi-c", "caught_wrong", trusted=False, at=i + 0.5, task_id=task.id))
    async with running_ledger(
        database_url, clean_jetstream, instances=2, ledger_head_interval_s=3600, ledger_signing_seed_file=seed,
        ledger_batch=4,
    ) as ledger:  # fmt: skip
        await publish_all(ledger, events)
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=60)
        await wait_until(ledger.settled)
        assert await ledger.dead_letters() == []
        heads_before_stop = await ledger.db.fetchval("SELECT count(*) FROM grid_ledger_heads")
    pool = await create_pool(database_url, max_size=1)
    try:
        entries, heads, key = await chain(pool)
        final = await balances(pool)
    finally:
        await pool.close()
    assert heads_before_stop == 0  # the interval never came
    # 30 tasks x 2 replicas x (reward + fund share), pi-a's release and pi-c's forfeit
    assert len(entries) == 30 * 2 * 2 + 2
    report = verify_chain(entries, heads, key)
    assert report.ok, report.reason
    assert key == signer.public_key and heads[-1]["seq"] == len(entries)
    assert sum(final.values()) == 0
    # pi-c's 20 replicas: those projected before its forfeit went to the fund, the others wait in
    # escrow (two ledgers may project a completion and the forfeit in either order).
    (forfeit,) = [e for e in entries if e["kind"] == "escrow_forfeit"]
    assert forfeit["amount_mt"] > 0 and forfeit["amount_mt"] % 558 == 0
    assert final["escrow:pi-c"] + forfeit["amount_mt"] == 558 * 20


async def test_a_re_check_pays_only_its_new_replicas_and_credits_no_co2_twice(
    projected: asyncpg.Pool,
) -> None:
    """D was pi-a's result taken alone (trusted, unchecked: its reward in escrow); the scheduler
    re-checks it by quorum with pi-c: its decision is another event, which pays pi-c's replica and
    nothing again for pi-a's."""
    _, tasks = scenario()
    keyring = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])
    d = tasks["D"]
    first = d.completed("trusted", [replica(1, "pi-a", "unchecked", trusted=True)])
    rechecked = d.completed("quorum", [replica(1, "pi-a", trusted=True), replica(2, "pi-c")]).model_copy(
        update={"id": task_event_id(d.id, "recheck:completed"), "time": first.time + timedelta(minutes=5)}
    )
    before = await projected.fetchval("SELECT max(seq) FROM grid_ledger_entries")
    assert await project(rechecked, PostgresProjectionUnitOfWork(projected, keyring)) is Projected.APPLIED
    new = await projected.fetch(
        "SELECT entry_id, kind, credit, amount_mt FROM grid_ledger_entries WHERE seq > $1 ORDER BY seq",
        before,
    )
    assert [(r["entry_id"], r["credit"], r["amount_mt"]) for r in new] == [
        (f"{d.id}/reward/2", "escrow:pi-c", 558),
        (f"{d.id}/fund_share/2", FUND, 62),
    ]
    async with projected.acquire() as conn:
        entries, heads, key = await chain(conn)
    assert verify_chain(entries, heads, key).ok
