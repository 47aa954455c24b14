"""The token ledger's rules: what a verified task and a change of a node's standing move. Pure.

Amounts are integers in milli-tokens (`token_chain.MILLI` per token), each component rounded
half up. The formula and its defaults are published in docs/grid-rewards.md; in short, each
valid, unflagged replica of a completed task earns

    base[task type] + per_1k_tokens x its model tokens / 1000
                    + per_second x min(its seconds, the type's deadline)
                    + per_100_kib x the task's document KiB / 100

paid by the task's copro: `fund_share` of it to the solidarity fund, the rest to the node's own
account when the node was trusted and its result checked (a quorum it belonged to, a spot check
it passed), else to its escrow. A trusted node passing a check also gets its escrow released.
The CO2 the task saved (what the cloud would have emitted for the accepted result's tokens minus
what the task's replicas emitted), when positive, is credited to the fund at `tokens_per_kg_co2`
x `co2_fund_share`. A node that earns trust has its escrow released; a node caught wrong or
sending a refused report forfeits it to the fund.

Entry ids are derived from what causes the leg: a replica's reward from its task and attempt (so
a second decision on the same task, a re-check, never pays a replica twice), a release or
forfeit from its event id and node, the CO2 credit from its task. Applying the same movements
twice writes them once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from koprogo_shared import co2
from koprogo_shared.task_events import (
    TASK_TYPES,
    NodeTrustChanged,
    ReplicaRecord,
    TaskCompleted,
    TaskUsage,
)

EntryKind = Literal["reward", "fund_share", "co2_credit", "escrow_release", "escrow_forfeit"]

FUND_ACCOUNT = "fund:solidarity"
NO_COPRO = "none"
KIB = 1024

# The defaults of docs/grid-rewards.md (milli-tokens), each overridable (GRID_REWARD_*).
DEFAULT_BASE_MT: Mapping[str, int] = {
    "ocr_invoice": 500,
    "predict_expenses": 200,
    "summarize_meeting": 500,
    "translate_document": 500,
}
DEFAULT_PER_1K_TOKENS_MT = 200
DEFAULT_PER_SECOND_MT = 10
DEFAULT_PER_100_KIB_MT = 20
DEFAULT_FUND_SHARE = Fraction(1, 10)
DEFAULT_TOKENS_PER_KG_CO2 = Fraction(100)
DEFAULT_CO2_FUND_SHARE = Fraction(1)
# The seconds paid are capped at the task type's run deadline: the scheduler's defaults
# (koprogo_grid.domain.rules.DEFAULT_RUN_DEADLINES_S), changed by the same GRID_DEADLINES.
DEFAULT_SECONDS_CAP: Mapping[str, float] = {
    "ocr_invoice": 300.0,
    "predict_expenses": 300.0,
    "summarize_meeting": 900.0,
    "translate_document": 1800.0,
}


def copro_account(copro_id: str | None) -> str:
    return f"copro:{copro_id or NO_COPRO}"


def node_account(node_id: str) -> str:
    return f"node:{node_id}"


def escrow_account(node_id: str) -> str:
    return f"escrow:{node_id}"


def round_half_up(value: Fraction) -> int:
    """`value` to the nearest integer, halves up (amounts are never negative here)."""
    return int((value + Fraction(1, 2)) // 1)


@dataclass(frozen=True, slots=True)
class RewardRules:
    """The published formula's parameters (docs/grid-rewards.md)."""

    base_mt: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_BASE_MT))
    per_1k_tokens_mt: int = DEFAULT_PER_1K_TOKENS_MT
    per_second_mt: int = DEFAULT_PER_SECOND_MT
    per_100_kib_mt: int = DEFAULT_PER_100_KIB_MT
    seconds_cap: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SECONDS_CAP))
    fund_share: Fraction = DEFAULT_FUND_SHARE
    tokens_per_kg_co2: Fraction = DEFAULT_TOKENS_PER_KG_CO2
    co2_fund_share: Fraction = DEFAULT_CO2_FUND_SHARE

    def __post_init__(self) -> None:
        if not 0 <= self.fund_share <= 1 or not 0 <= self.co2_fund_share <= 1:
            raise ValueError("GRID_FUND_SHARE and GRID_CO2_FUND_SHARE must be within [0, 1]")
        amounts = (self.per_1k_tokens_mt, self.per_second_mt, self.per_100_kib_mt, *self.base_mt.values())
        if min(amounts) < 0 or self.tokens_per_kg_co2 < 0:
            raise ValueError("reward amounts and GRID_TOKENS_PER_KG_CO2 must be >= 0")

    def cap_s(self, task_type: str) -> float:
        return self.seconds_cap.get(task_type, max(DEFAULT_SECONDS_CAP.values()))


@dataclass(frozen=True, slots=True)
class Movement:
    """One ledger entry before it is chained (seq, time and hashes come when it is appended)."""

    entry_id: str
    debit: str
    credit: str
    amount_mt: int
    kind: EntryKind
    task_id: str | None = None
    node_id: str | None = None
    copro_id: str | None = None
    memo: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.amount_mt <= 0 or self.debit == self.credit:
            raise ValueError(
                f"{self.entry_id}: not a movement ({self.amount_mt} mt, {self.debit} -> {self.credit})"
            )


@dataclass(frozen=True, slots=True)
class RewardBreakdown:
    """A replica's reward and its components (kept in the entry's memo)."""

    base_mt: int
    tokens_mt: int
    time_mt: int
    size_mt: int
    tokens: int
    seconds_paid: float
    document_kib: float

    @property
    def total_mt(self) -> int:
        return self.base_mt + self.tokens_mt + self.time_mt + self.size_mt

    def memo(self) -> dict[str, Any]:
        return {
            "base_mt": self.base_mt,
            "tokens_mt": self.tokens_mt,
            "time_mt": self.time_mt,
            "size_mt": self.size_mt,
            "tokens": self.tokens,
            "seconds_paid": self.seconds_paid,
            "document_kib": self.document_kib,
        }


def _seconds(replica: ReplicaRecord) -> float:
    if replica.usage is not None:
        return replica.usage.duration_s
    return 0.0 if replica.attestation is None else replica.attestation.duration_s


def _tokens(usage: TaskUsage | None) -> int:
    return 0 if usage is None else usage.prompt_tokens + usage.completion_tokens


def replica_reward(
    rules: RewardRules, task_type: str, usage: TaskUsage | None, seconds: float, document_bytes: int
) -> RewardBreakdown:
    """The formula for one replica (docs/grid-rewards.md)."""
    tokens = _tokens(usage)
    paid_s = min(max(seconds, 0.0), rules.cap_s(task_type))
    return RewardBreakdown(
        base_mt=rules.base_mt.get(task_type, 0),
        tokens_mt=round_half_up(Fraction(rules.per_1k_tokens_mt * tokens, 1000)),
        time_mt=round_half_up(rules.per_second_mt * Fraction(paid_s)),
        size_mt=round_half_up(Fraction(rules.per_100_kib_mt * max(document_bytes, 0), 100 * KIB)),
        tokens=tokens,
        seconds_paid=paid_s,
        document_kib=round(max(document_bytes, 0) / KIB, 3),
    )


def earns(replica: ReplicaRecord) -> bool:
    """A replica whose result was accepted (valid, or a trusted node's unchecked) and whose energy
    attestation was believed; flagged, invalid, refused, lost and pending ones earn nothing."""
    return replica.verdict in ("valid", "unchecked") and not replica.flags


def passed_a_check(replica: ReplicaRecord) -> bool:
    """A trusted node whose result agreed with others' (a spot check or a quorum): its reward is
    paid to its own account, and its escrow is released."""
    return replica.trusted and replica.verdict == "valid" and not replica.flags


def escrow_nodes_released(event: TaskCompleted) -> list[str]:
    """The nodes whose escrow this completion releases (their balances are read before applying)."""
    if event.verification is None:
        return []
    return sorted({r.node_id for r in event.verification.replicas if passed_a_check(r)})


def completion_movements(
    event: TaskCompleted,
    rules: RewardRules,
    *,
    copro_id: str | None,
    document_bytes: int,
    escrow_balances: Mapping[str, int],
) -> list[Movement]:
    """What a completed task moves: per earning replica its reward and the fund's share, the escrow
    of trusted nodes that passed a check, and the CO2 credit. Nothing without a verification (a
    result no verification accepted is paid nothing)."""
    verification = event.verification
    if verification is None:
        return []
    payer = copro_account(copro_id)
    task = event.task_id
    moves: list[Movement] = []
    for replica in verification.replicas:
        if not earns(replica):
            continue
        reward = replica_reward(rules, event.task_type, replica.usage, _seconds(replica), document_bytes)
        fund_part = round_half_up(reward.total_mt * rules.fund_share)
        node_part = reward.total_mt - fund_part
        paid_to = (
            node_account(replica.node_id) if passed_a_check(replica) else escrow_account(replica.node_id)
        )
        memo = {
            **reward.memo(),
            "reward_mt": reward.total_mt,
            "task_type": event.task_type,
            "attempt": replica.attempt,
            "policy": verification.policy,
            "verdict": replica.verdict,
            "trusted": replica.trusted,
        }
        common = {"task_id": task, "node_id": replica.node_id, "copro_id": copro_id}
        if node_part > 0:
            moves.append(
                Movement(
                    f"{task}/reward/{replica.attempt}",
                    payer,
                    paid_to,
                    node_part,
                    "reward",
                    memo=memo,
                    **common,
                )
            )
        if fund_part > 0:
            moves.append(
                Movement(
                    f"{task}/fund_share/{replica.attempt}",
                    payer,
                    FUND_ACCOUNT,
                    fund_part,
                    "fund_share",
                    memo={
                        "reward_mt": reward.total_mt,
                        "fund_share": str(rules.fund_share),
                        "attempt": replica.attempt,
                    },
                    **common,
                )
            )
    for node in escrow_nodes_released(event):
        held = escrow_balances.get(node, 0)
        if held > 0:
            moves.append(
                Movement(
                    f"{event.id}/escrow_release/{node}",
                    escrow_account(node),
                    node_account(node),
                    held,
                    "escrow_release",
                    task_id=task,
                    node_id=node,
                    copro_id=copro_id,
                    memo={"reason": "passed_check", "policy": verification.policy},
                )
            )
    credit = co2_credit(event, rules, payer, copro_id)
    if credit is not None:
        moves.append(credit)
    return moves


def co2_credit(event: TaskCompleted, rules: RewardRules, payer: str, copro_id: str | None) -> Movement | None:
    """The fund's CO2 credit for a completed task: saved grams x tokens/kg x share, when positive."""
    tokens = _tokens(event.usage)
    saved_g = co2.cloud_grams(tokens) - event.co2_grams
    if saved_g <= 0:
        return None
    credited_g = Fraction(saved_g) * rules.co2_fund_share
    # grams / 1000 (kg) x tokens per kg x 1000 (milli-tokens per token): grams x tokens per kg.
    amount = round_half_up(credited_g * rules.tokens_per_kg_co2)
    if amount <= 0:
        return None
    return Movement(
        f"{event.task_id}/co2_credit",
        payer,
        FUND_ACCOUNT,
        amount,
        "co2_credit",
        task_id=event.task_id,
        copro_id=copro_id,
        memo={
            "co2_saved_grams": saved_g,
            "co2_credited_grams": float(credited_g),
            "cloud_grams": co2.cloud_grams(tokens),
            "task_co2_grams": event.co2_grams,
            "tokens": tokens,
            "tokens_per_kg_co2": str(rules.tokens_per_kg_co2),
            "co2_fund_share": str(rules.co2_fund_share),
        },
    )


def trust_movements(event: NodeTrustChanged, escrow_balance: int) -> list[Movement]:
    """What a change of a node's standing moves: its whole escrow, released when it earned trust,
    forfeited to the fund when it was caught wrong or sent a refused report; nothing otherwise."""
    if escrow_balance <= 0:
        return []
    node = event.node_id
    memo = {"reason": event.reason, "valid_streak": event.valid_streak}
    match event.reason:
        case "earned":
            return [
                Movement(
                    f"{event.id}/escrow_release/{node}",
                    escrow_account(node),
                    node_account(node),
                    escrow_balance,
                    "escrow_release",
                    task_id=event.task_id,
                    node_id=node,
                    memo=memo,
                )
            ]
        case "caught_wrong" | "bad_signature":
            return [
                Movement(
                    f"{event.id}/escrow_forfeit/{node}",
                    escrow_account(node),
                    FUND_ACCOUNT,
                    escrow_balance,
                    "escrow_forfeit",
                    task_id=event.task_id,
                    node_id=node,
                    memo=memo,
                )
            ]
        case _:
            return []


def moves_escrow(event: NodeTrustChanged) -> bool:
    return event.reason in ("earned", "caught_wrong", "bad_signature")


def parse_per_type(text: str, setting: str, defaults: Mapping[str, float]) -> dict[str, float]:
    """`"ocr_invoice=120,translate_document=3600"` -> `defaults` with those changed (ValueError
    naming `setting` for an unknown task type or a negative or non-numeric value)."""
    values = dict(defaults)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in TASK_TYPES:
            raise ValueError(f"{setting}: {part!r} is not <task type>=<number> ({', '.join(TASK_TYPES)})")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{setting}: {name}={value.strip()!r} is not a number") from None
        if not number >= 0:
            raise ValueError(f"{setting}: {name} needs a number >= 0")
        values[name] = number
    return values
