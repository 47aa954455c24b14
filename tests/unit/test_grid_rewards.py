"""The token ledger's rules (`koprogo_ledger.domain.rewards`), its chaining and its use case with
in-memory fakes: the published formula, who is paid where, escrow released and forfeited, the
fund's shares, and a ledger that sums to zero and verifies."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import nkeys
import pytest

from koprogo_ledger.domain.errors import TaskNotYetProjectedError
from koprogo_ledger.domain.ledger_chain import ChainTip, chained_rows
from koprogo_ledger.domain.rewards import (
    FUND_ACCOUNT,
    Movement,
    RewardRules,
    completion_movements,
    parse_per_type,
    replica_reward,
    trust_movements,
)
from koprogo_ledger.domain.task_records import TaskState, forged_task_sender
from koprogo_ledger.service_layer.grid_accounts import append_movements, apply_grid_accounts
from koprogo_ledger.service_layer.ledger_heads import sign_head
from koprogo_ledger.service_layer.ports import (
    GridNodes,
    LedgerHeads,
    ProjectionUnitOfWork,
    TaskProjection,
    TokenLedger,
)
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared import co2, subjects
from koprogo_shared.grid_signing import Signer
from koprogo_shared.task_events import (
    NodeTrustChanged,
    ReplicaRecord,
    TaskCompleted,
    TaskType,
    TaskUsage,
    TaskVerification,
)
from koprogo_shared.token_chain import GENESIS, verify_chain
from tests.unit.ledger_fakes import FakeGridNodes, FakeTaskProjection, FakeTokenLedger

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
RULES = RewardRules()
SCHEDULER = "koprogo/grid-scheduler"


def usage(tokens: int = 0, seconds: float = 10.0) -> TaskUsage:
    return TaskUsage(prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2, duration_s=seconds)


def replica(
    attempt: int, node: str, verdict: str = "valid", *, trusted: bool = False, flags: tuple[str, ...] = (),
    tokens: int = 0, seconds: float = 10.0,
) -> ReplicaRecord:  # fmt: skip
    return ReplicaRecord.model_validate(
        {"attempt": attempt, "node_id": node, "owner": f"owner-of-{node}", "trusted": trusted, "verdict": verdict,
         "usage": usage(tokens, seconds).model_dump(), "co2_grams": 0.01, "flags": list(flags)}
    )  # fmt: skip


def completed(
    replicas: list[ReplicaRecord], *, policy: str = "quorum", task_type: TaskType = "ocr_invoice",
    tokens: int = 0, co2_grams: float = 0.02, task_id: str | None = None,
) -> TaskCompleted:  # fmt: skip
    accepted = next(r for r in replicas if r.verdict in ("valid", "unchecked", "flagged"))
    return TaskCompleted(
        id=str(uuid.uuid4()), source=SCHEDULER, time=T0, copro_id="copro-a", task_id=task_id or str(uuid.uuid4()),
        task_type=task_type, attempt=accepted.attempt, node_id=accepted.node_id, result={"total": "312.40"},
        usage=usage(tokens, 10.0), co2_grams=co2_grams,
        verification=TaskVerification.model_validate(
            {"policy": policy, "quorum": 2, "max_replicas": 4, "replicas": [r.model_dump() for r in replicas],
             "agreement": 2, "outcome": "accepted" if policy != "trusted" else "accepted_unchecked"}
        ),
    )  # fmt: skip


def trust(node: str, reason: str, *, trusted: bool) -> NodeTrustChanged:
    return NodeTrustChanged.model_validate(
        {"id": str(uuid.uuid4()), "source": SCHEDULER, "time": T0 + timedelta(seconds=1), "node_id": node,
         "owner": f"owner-of-{node}", "trusted": trusted, "reason": reason, "task_id": str(uuid.uuid4()),
         "valid_streak": 5 if trusted else 0, "validated": 5, "invalid": 0}
    )  # fmt: skip


def by_kind(moves: list[Movement]) -> dict[str, list[Movement]]:
    out: dict[str, list[Movement]] = {}
    for move in moves:
        out.setdefault(move.kind, []).append(move)
    return out


def balances(moves: list[Movement]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in moves:
        out[m.debit] = out.get(m.debit, 0) - m.amount_mt
        out[m.credit] = out.get(m.credit, 0) + m.amount_mt
    return out


# ----- the formula ------------------------------------------------------------------------------


def test_the_formula_adds_base_tokens_time_and_document_size_in_milli_tokens() -> None:
    reward = replica_reward(RULES, "summarize_meeting", usage(2_000, 120.0), 120.0, 300 * 1024)
    # 500 base + 200 x 2000/1000 + 10 x 120 s + 20 x 300 KiB / 100
    assert (reward.base_mt, reward.tokens_mt, reward.time_mt, reward.size_mt) == (500, 400, 1200, 60)
    assert reward.total_mt == 2160


def test_the_seconds_paid_are_capped_at_the_task_types_deadline() -> None:
    slow = replica_reward(RULES, "ocr_invoice", usage(0, 5_000.0), 5_000.0, 0)
    assert slow.seconds_paid == 300.0 and slow.time_mt == 3_000
    capped = RewardRules(seconds_cap={"ocr_invoice": 60.0})
    assert replica_reward(capped, "ocr_invoice", None, 5_000.0, 0).time_mt == 600


def test_components_are_rounded_half_up_to_whole_milli_tokens() -> None:
    reward = replica_reward(RULES, "predict_expenses", usage(2_5, 0.05), 0.05, 512)
    # 200 x 25/1000 = 5; 10 x 0.05 = 0.5 -> 1; 20 x 0.5 KiB / 100 = 0.1 -> 0
    assert (reward.tokens_mt, reward.time_mt, reward.size_mt) == (5, 1, 0)


def test_per_type_settings_parse_and_refuse_unknown_types() -> None:
    assert parse_per_type("ocr_invoice=900", "GRID_REWARD_BASE", {"ocr_invoice": 500.0})["ocr_invoice"] == 900
    with pytest.raises(ValueError, match="GRID_REWARD_BASE"):
        parse_per_type("ocr=900", "GRID_REWARD_BASE", {})
    with pytest.raises(ValueError, match="not a number"):
        parse_per_type("ocr_invoice=lots", "GRID_REWARD_BASE", {})


def test_settings_build_the_rules_from_decimals_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRID_FUND_SHARE", "0.15")
    monkeypatch.setenv("GRID_REWARD_BASE", "translate_document=900")
    monkeypatch.setenv("GRID_DEADLINES", "ocr_invoice=120")
    rules = LedgerSettings(database_url="postgresql://x/y").reward_rules()
    assert rules.fund_share == Fraction(3, 20)
    assert rules.base_mt["translate_document"] == 900 and rules.base_mt["ocr_invoice"] == 500
    assert rules.cap_s("ocr_invoice") == 120.0
    monkeypatch.setenv("GRID_REWARD_BASE", "nonsense=1")
    with pytest.raises(ValueError, match="GRID_REWARD_BASE"):
        LedgerSettings(database_url="postgresql://x/y")


# ----- who is paid where ------------------------------------------------------------------------


def test_an_honest_quorum_of_untrusted_nodes_pays_their_escrow_and_the_funds_share() -> None:
    event = completed([replica(1, "pi-a"), replica(2, "pi-b", seconds=20.0)])
    moves = completion_movements(
        event, RULES, copro_id="copro-a", document_bytes=100 * 1024, escrow_balances={}
    )
    kinds = by_kind(moves)
    assert [(m.credit, m.amount_mt) for m in kinds["reward"]] == [("escrow:pi-a", 558), ("escrow:pi-b", 648)]
    # 620 and 720 mt earned: 10 % (62, 72) to the fund
    assert [(m.credit, m.amount_mt) for m in kinds["fund_share"]] == [(FUND_ACCOUNT, 62), (FUND_ACCOUNT, 72)]
    assert {m.debit for m in moves} == {"copro:copro-a"}
    assert sum(balances(moves).values()) == 0
    assert "co2_credit" not in kinds  # OCR uses no model tokens: the cloud would have emitted nothing


def test_a_trusted_node_passing_a_check_is_paid_directly_and_its_escrow_released() -> None:
    event = completed([replica(1, "pi-t", trusted=True), replica(2, "pi-b")], policy="spot_check")
    moves = completion_movements(
        event, RULES, copro_id="copro-a", document_bytes=0, escrow_balances={"pi-t": 4_321, "pi-b": 999}
    )
    kinds = by_kind(moves)
    assert [m.credit for m in kinds["reward"]] == ["node:pi-t", "escrow:pi-b"]
    assert [(m.debit, m.credit, m.amount_mt) for m in kinds["escrow_release"]] == [
        ("escrow:pi-t", "node:pi-t", 4_321)
    ]


def test_a_trusted_nodes_unchecked_result_is_held_in_escrow() -> None:
    event = completed([replica(1, "pi-t", "unchecked", trusted=True)], policy="trusted")
    moves = completion_movements(event, RULES, copro_id=None, document_bytes=0, escrow_balances={"pi-t": 50})
    assert [(m.debit, m.credit) for m in by_kind(moves)["reward"]] == [("copro:none", "escrow:pi-t")]
    assert "escrow_release" not in by_kind(moves)


def test_flagged_invalid_refused_and_lost_replicas_earn_nothing() -> None:
    event = completed([
        replica(1, "pi-a"), replica(2, "pi-b", flags=("energy_below_idle",)), replica(3, "pi-lazy", "invalid"),
        replica(4, "pi-forger", "refused"), replica(5, "pi-gone", "lost"), replica(6, "pi-c", "flagged"),
    ])  # fmt: skip
    moves = completion_movements(event, RULES, copro_id="copro-a", document_bytes=0, escrow_balances={})
    assert {m.node_id for m in moves} == {"pi-a"}


def test_a_flagged_trusted_replica_releases_no_escrow() -> None:
    event = completed([replica(1, "pi-t", trusted=True, flags=("solar_at_night",)), replica(2, "pi-b")])
    moves = completion_movements(event, RULES, copro_id="c", document_bytes=0, escrow_balances={"pi-t": 700})
    assert {m.node_id for m in moves} == {"pi-b"}


def test_the_co2_saved_is_credited_to_the_fund_at_the_published_rate() -> None:
    tokens = 200_000  # the cloud would have emitted 60 g for them
    event = completed([replica(1, "pi-a", tokens=tokens), replica(2, "pi-b", tokens=tokens)],
                      task_type="translate_document", tokens=tokens, co2_grams=10.0)  # fmt: skip
    moves = completion_movements(event, RULES, copro_id="copro-a", document_bytes=0, escrow_balances={})
    (credit,) = by_kind(moves)["co2_credit"]
    saved = co2.cloud_grams(tokens) - 10.0
    assert saved == pytest.approx(50.0)
    # 50 g = 0.05 kg x 100 tokens/kg = 5 tokens = 5000 mt
    assert (credit.debit, credit.credit, credit.amount_mt) == ("copro:copro-a", FUND_ACCOUNT, 5_000)
    assert credit.memo["co2_saved_grams"] == pytest.approx(50.0)
    half = RewardRules(co2_fund_share=Fraction(1, 2))
    moves = completion_movements(event, half, copro_id="copro-a", document_bytes=0, escrow_balances={})
    assert by_kind(moves)["co2_credit"][0].amount_mt == 2_500


def test_a_task_that_emitted_more_than_the_cloud_would_have_credits_no_co2() -> None:
    event = completed([replica(1, "pi-a", tokens=1_000), replica(2, "pi-b", tokens=1_000)],
                      task_type="summarize_meeting", tokens=1_000, co2_grams=5.0)  # fmt: skip
    moves = completion_movements(event, RULES, copro_id="copro-a", document_bytes=0, escrow_balances={})
    assert "co2_credit" not in by_kind(moves)


def test_a_completion_without_verification_pays_nothing() -> None:
    event = completed([replica(1, "pi-a")]).model_copy(update={"verification": None})
    assert completion_movements(event, RULES, copro_id="c", document_bytes=0, escrow_balances={}) == []


def test_earning_trust_releases_the_whole_escrow_and_being_caught_forfeits_it() -> None:
    (release,) = trust_movements(trust("pi-a", "earned", trusted=True), 3_100)
    assert (release.kind, release.debit, release.credit, release.amount_mt) == (
        "escrow_release", "escrow:pi-a", "node:pi-a", 3_100,
    )  # fmt: skip
    for reason in ("caught_wrong", "bad_signature"):
        (forfeit,) = trust_movements(trust("pi-a", reason, trusted=False), 3_100)
        assert (forfeit.kind, forfeit.debit, forfeit.credit) == (
            "escrow_forfeit",
            "escrow:pi-a",
            FUND_ACCOUNT,
        )
    assert trust_movements(trust("pi-a", "implausible_attestation", trusted=False), 3_100) == []
    assert trust_movements(trust("pi-a", "earned", trusted=True), 0) == []


def test_entry_ids_are_derived_so_the_same_decision_gives_the_same_entries() -> None:
    event = completed([replica(1, "pi-a"), replica(2, "pi-b")])
    first = completion_movements(event, RULES, copro_id="c", document_bytes=0, escrow_balances={})
    again = completion_movements(event, RULES, copro_id="c", document_bytes=0, escrow_balances={})
    assert first == again
    assert len({m.entry_id for m in first}) == len(first)
    assert first[0].entry_id == f"{event.task_id}/reward/1"


# ----- chaining and the use case with fakes -------------------------------------------------------


class FakeUnitOfWork(ProjectionUnitOfWork):
    """Only what `apply_grid_accounts` uses."""

    def __init__(self, tasks: dict[uuid.UUID, TaskState]) -> None:
        self.ledger = FakeTokenLedger()
        self.nodes = FakeGridNodes()
        self._tasks = FakeTaskProjection(tasks)

    @property
    def tasks(self) -> TaskProjection:
        return self._tasks

    @property
    def token_ledger(self) -> TokenLedger:
        return self.ledger

    @property
    def grid_nodes(self) -> GridNodes:
        return self.nodes

    async def _begin(self) -> None: ...
    async def _end(self) -> None: ...
    async def commit(self) -> None: ...

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        yield

    async def claim_event(self, event_id: str, event_type: str) -> bool:
        raise NotImplementedError

    insert_request = lock_request = settle_request = insert_response = claim_event  # type: ignore[assignment]
    lock_response_of = withdraw_response = record_late_answer = record_delivery = claim_event  # type: ignore[assignment]
    erase_user_contents = claim_event  # type: ignore[assignment]


def test_chained_rows_follow_the_tip_and_verify() -> None:
    moves = completion_movements(
        completed([replica(1, "pi-a"), replica(2, "pi-b")]),
        RULES,
        copro_id="c",
        document_bytes=0,
        escrow_balances={},
    )
    first = chained_rows(moves[:2], ChainTip(), T0)
    rest = chained_rows(moves[2:], ChainTip(first[-1]["seq"], first[-1]["hash"]), T0)
    assert first[0]["prev_hash"] == GENESIS and rest[0]["prev_hash"] == first[-1]["hash"]
    assert verify_chain(first + rest).ok
    altered = [*first, {**rest[0], "amount_mt": rest[0]["amount_mt"] + 1}, *rest[1:]]
    report = verify_chain(altered)
    assert not report.ok and report.broken_at == 3


def test_recorded_at_is_hashed_as_utc_whatever_zone_it_is_given_in() -> None:
    from zoneinfo import ZoneInfo

    moves = [Movement("x/reward/1", "copro:c", "node:n", 10, "reward")]
    in_brussels = T0.astimezone(ZoneInfo("Europe/Brussels"))
    (row,) = chained_rows(moves, ChainTip(), in_brussels)
    assert row["recorded_at"].utcoffset() == timedelta(0)
    assert verify_chain([{**row, "recorded_at": in_brussels}]).ok  # a reader in another zone agrees


async def test_a_quorum_then_earned_trust_then_a_caught_node_balance_to_zero_and_verify() -> None:
    honest, lazy = str(uuid.uuid4()), str(uuid.uuid4())
    tasks = {uuid.UUID(t): TaskState(status="completed", copro_id="copro-a", attempts=2, document_bytes=200 * 1024)
             for t in (honest, lazy)}  # fmt: skip
    uow = FakeUnitOfWork(tasks)
    first = completed([replica(1, "pi-a"), replica(2, "pi-b")], task_id=honest)
    second = completed([replica(1, "pi-a"), replica(2, "pi-c"), replica(3, "pi-b", "invalid")], task_id=lazy)
    for event in (first, second):
        assert await apply_grid_accounts(event, uow, RULES, lambda: T0)
    escrow_a = (await uow.ledger.balances(["escrow:pi-a"]))["escrow:pi-a"]
    escrow_b = (await uow.ledger.balances(["escrow:pi-b"]))["escrow:pi-b"]
    assert escrow_a > 0 and escrow_b > 0
    await apply_grid_accounts(trust("pi-a", "earned", trusted=True), uow, RULES, lambda: T0)
    await apply_grid_accounts(trust("pi-b", "caught_wrong", trusted=False), uow, RULES, lambda: T0)
    await apply_grid_accounts(trust("pi-c", "implausible_attestation", trusted=False), uow, RULES, lambda: T0)
    final = await uow.ledger.balances(["node:pi-a", "escrow:pi-a", "escrow:pi-b", "node:pi-b", FUND_ACCOUNT])
    assert final["node:pi-a"] == escrow_a and final["escrow:pi-a"] == 0
    assert final["escrow:pi-b"] == 0 and final["node:pi-b"] == 0
    forfeits = [r for r in uow.ledger.rows if r["kind"] == "escrow_forfeit"]
    assert [(r["credit"], r["amount_mt"]) for r in forfeits] == [(FUND_ACCOUNT, escrow_b)]
    report = verify_chain(uow.ledger.rows)
    assert report.ok and report.balances_sum_mt == 0 and report.entries == len(uow.ledger.rows)
    assert uow.nodes.verdicts[(uuid.UUID(lazy), 3)] == "invalid"
    assert uow.nodes.trust == {"pi-a": True, "pi-b": False, "pi-c": False}
    # The same decisions applied again (a re-check's completion, another event id) pay nobody twice.
    count = len(uow.ledger.rows)
    again = first.model_copy(update={"id": str(uuid.uuid4())})
    await apply_grid_accounts(again, uow, RULES, lambda: T0)
    assert len(uow.ledger.rows) == count


async def test_a_completion_of_a_task_not_projected_yet_waits_for_it() -> None:
    uow = FakeUnitOfWork({})
    with pytest.raises(TaskNotYetProjectedError):
        await apply_grid_accounts(completed([replica(1, "pi-a")]), uow, RULES, lambda: T0)
    assert uow.ledger.rows == []


async def test_appending_the_same_movements_twice_writes_them_once() -> None:
    ledger = FakeTokenLedger()
    moves = [Movement("t/reward/1", "copro:c", "escrow:n", 90, "reward"), Movement("t/fund/1", "copro:c", FUND_ACCOUNT, 10, "fund_share")]  # fmt: skip
    assert await append_movements(ledger, moves, T0) == 2
    assert await append_movements(ledger, moves, T0) == 0
    assert len(ledger.rows) == 2


class FakeHeads(LedgerHeads):
    def __init__(self, ledger: FakeTokenLedger) -> None:
        self.ledger = ledger
        self.heads: list[dict[str, Any]] = []

    async def tip(self) -> ChainTip:
        return await self.ledger.tip()

    async def last_signed_seq(self) -> int:
        return self.heads[-1]["seq"] if self.heads else 0

    async def insert_head(
        self, seq: int, hash_: str, signed_at: datetime, signer: str, signature: str
    ) -> bool:
        self.heads.append(
            {"seq": seq, "hash": hash_, "signed_at": signed_at, "signer": signer, "signature": signature}
        )
        return True

    async def register_key(self, public_key: str, at: datetime) -> None: ...


async def test_a_head_is_signed_only_when_the_chain_moved_and_it_verifies() -> None:
    signer = Signer(nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER))
    ledger = FakeTokenLedger()
    heads = FakeHeads(ledger)
    assert await sign_head(heads, signer, T0) is None  # an empty ledger
    await append_movements(ledger, [Movement("t/reward/1", "copro:c", "escrow:n", 90, "reward")], T0)
    assert await sign_head(heads, signer, T0) == 1
    assert await sign_head(heads, signer, T0) is None  # nothing new
    assert verify_chain(ledger.rows, heads.heads, signer.public_key).ok
    other = Signer(nkeys.encode_seed(bytes(range(1, 33)), nkeys.PREFIX_BYTE_USER))
    assert not verify_chain(ledger.rows, heads.heads, other.public_key).ok


# ----- who may say a node's standing changed ----------------------------------------------------------


def test_a_node_trust_change_counts_only_on_the_schedulers_subject_for_that_node() -> None:
    event = trust("pi-a", "earned", trusted=True)
    assert forged_task_sender(subjects.grid_node_trust("pi-a"), event, nodes_keyed=True) is None
    assert forged_task_sender(subjects.grid_node_trust("pi-b"), event, nodes_keyed=True) is not None
    on_node_subject = subjects.node_task_event("result_reported", "copro-a", "pi-a")
    assert forged_task_sender(on_node_subject, event, nodes_keyed=True) is not None


def test_a_schedulers_decision_on_a_nodes_own_subject_is_refused() -> None:
    event = completed([replica(1, "pi-a"), replica(2, "pi-b")])
    node_subject = subjects.node_task_event("completed", "copro-a", "pi-a")
    assert "only the scheduler" in (forged_task_sender(node_subject, event, nodes_keyed=False) or "")
    assert forged_task_sender(subjects.task_event("completed", "copro-a"), event, nodes_keyed=True) is None
