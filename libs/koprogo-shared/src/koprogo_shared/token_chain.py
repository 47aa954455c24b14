"""The token ledger's hash chain, and its verification. Pure: the ledger, the gateway and the CLI use it.

Each entry moves `amount_mt` milli-tokens from `debit` to `credit` and carries the hash of the
entry before it (docs/grid-trust.md):

    hash = sha256( prev_hash || canonical JSON of the entry's fields but `hash` )

The first entry's `prev_hash` is GENESIS. The ledger signs the head (seq, hash) from time to time
with its Ed25519 key (`grid_signing`); a head is a promise that the chain up to `seq` ended in
`hash`, so rewriting history and recomputing every hash after it still fails at the first signed
head past the rewrite.

An export is JSON lines: a header `{"format": EXPORT_FORMAT, "ledger_public_key": ...}`, then one
`{"entry": {...}}` per entry in seq order, then one `{"head": {...}}` per signed head. Anyone can
check one offline with `koprogo ledger verify --export FILE`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from koprogo_shared.grid_signing import canonical_json, verify

GENESIS = "0" * 64
EXPORT_FORMAT = "koprogo-token-ledger/1"
MILLI = 1000  # milli-tokens per token

ENTRY_FIELDS = (
    "seq",
    "entry_id",
    "recorded_at",
    "debit",
    "credit",
    "amount_mt",
    "kind",
    "task_id",
    "node_id",
    "copro_id",
    "memo",
    "prev_hash",
)
ENTRY_KINDS = frozenset({"reward", "fund_share", "co2_credit", "escrow_release", "escrow_forfeit"})


def _iso(value: Any) -> Any:
    """A datetime as one spelling per instant (UTC, microseconds), whatever time zone the reader's
    database driver hands it back in; a naive datetime is taken as UTC. Anything else as it is."""
    if not isinstance(value, datetime):
        return value
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


def entry_body(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The fields an entry's hash covers, in their canonical form."""
    return {name: _iso(entry.get(name)) for name in ENTRY_FIELDS}


def entry_hash(entry: Mapping[str, Any]) -> str:
    """The hash an entry must carry, from its fields (its `prev_hash` included)."""
    body = entry_body(entry)
    return hashlib.sha256(str(body["prev_hash"]).encode() + canonical_json(body)).hexdigest()


def head_payload(seq: int, hash_: str) -> dict[str, Any]:
    return {"ledger": EXPORT_FORMAT, "seq": seq, "hash": hash_}


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What a verification found. `broken_at`: the seq of the first entry (or head) that fails."""

    ok: bool
    entries: int
    heads: int
    head_seq: int | None
    head_hash: str | None
    balances_sum_mt: int
    broken_at: int | None = None
    reason: str | None = None
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "signed_heads": self.heads,
            "head": None if self.head_seq is None else {"seq": self.head_seq, "hash": self.head_hash},
            "balances_sum_tokens": self.balances_sum_mt / MILLI,
            "broken_at": self.broken_at,
            "reason": self.reason,
        }


def verify_chain(
    entries: Iterable[Mapping[str, Any]],
    heads: Iterable[Mapping[str, Any]] = (),
    ledger_public_key: str | None = None,
) -> ChainReport:
    """Recompute the chain of `entries` (in seq order) and check every signed head against it.

    Checks: seq runs 1, 2, 3... without gaps; each `prev_hash` is the previous entry's hash; each
    `hash` is recomputed from the fields; amounts are positive and debit differs from credit;
    every head's signature verifies with `ledger_public_key` and its hash is the chain's at its seq.
    The first failure is reported with its seq (`broken_at`) and why.
    """
    expected_prev = GENESIS
    hashes: dict[int, str] = {}
    balances: dict[str, int] = {}
    count = 0
    failure: tuple[int, str] | None = None
    for entry in entries:
        count += 1
        seq = int(entry.get("seq", 0))
        problem = None
        if seq != count:
            problem = f"entry {seq}: expected seq {count} (an entry is missing or out of order)"
        elif entry.get("prev_hash") != expected_prev:
            problem = f"entry {seq}: prev_hash does not match entry {seq - 1}'s hash"
        elif entry.get("hash") != entry_hash(entry):
            problem = f"entry {seq}: its fields do not hash to its hash (altered)"
        elif int(entry.get("amount_mt", 0)) <= 0 or entry.get("debit") == entry.get("credit"):
            problem = f"entry {seq}: not a movement (amount <= 0 or debit = credit)"
        if problem is not None and failure is None:
            failure = (seq, problem)
        amount = int(entry.get("amount_mt", 0))
        balances[str(entry.get("debit"))] = balances.get(str(entry.get("debit")), 0) - amount
        balances[str(entry.get("credit"))] = balances.get(str(entry.get("credit")), 0) + amount
        hashes[seq] = str(entry.get("hash"))
        expected_prev = str(entry.get("hash"))
    head_count = 0
    head_seq: int | None = None
    for head in heads:
        head_count += 1
        seq, hash_ = int(head["seq"]), str(head["hash"])
        problem = None
        if ledger_public_key is None:
            problem = f"head {seq}: no ledger public key to check its signature with"
        elif not verify(ledger_public_key, head_payload(seq, hash_), str(head.get("signature", ""))):
            problem = f"head {seq}: its signature does not verify with the ledger's key"
        elif seq not in hashes:
            problem = f"head {seq}: the chain has no entry {seq} (entries were removed)"
        elif hashes[seq] != hash_:
            problem = (
                f"head {seq}: the chain's hash at {seq} differs from the signed head (history rewritten)"
            )
        if problem is not None and (failure is None or seq < failure[0]):
            failure = (seq, problem)
        head_seq = seq if head_seq is None else max(head_seq, seq)
    total = sum(balances.values())
    if failure is None and total != 0:
        failure = (count, f"the balances sum to {total} mt, not 0")
    last = count or None
    return ChainReport(
        ok=failure is None,
        entries=count,
        heads=head_count,
        head_seq=last,
        head_hash=hashes.get(count) if count else None,
        balances_sum_mt=total,
        broken_at=None if failure is None else failure[0],
        reason=None if failure is None else failure[1],
    )


def export_lines(
    entries: Iterable[Mapping[str, Any]], heads: Iterable[Mapping[str, Any]], ledger_public_key: str | None
) -> Iterator[str]:
    """The export's JSON lines (each without its newline)."""
    yield json.dumps({"format": EXPORT_FORMAT, "ledger_public_key": ledger_public_key})
    for entry in entries:
        yield json.dumps({"entry": {**entry_body(entry), "hash": entry.get("hash")}}, ensure_ascii=False)
    for head in heads:
        yield json.dumps({"head": {k: _iso(v) for k, v in head.items()}})


def verify_export(lines: Iterable[str]) -> ChainReport:
    """Verify an export (`export_lines`); ValueError when it is not one."""
    it = iter(lines)
    try:
        header = json.loads(next(it))
    except (StopIteration, json.JSONDecodeError):
        raise ValueError("not a token-ledger export: no header line") from None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a token-ledger export: the first line must name format {EXPORT_FORMAT!r}")
    entries: list[dict[str, Any]] = []
    heads: list[dict[str, Any]] = []
    for number, line in enumerate(it, start=2):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"line {number} is not JSON") from None
        if "entry" in item:
            entries.append(item["entry"])
        elif "head" in item:
            heads.append(item["head"])
        else:
            raise ValueError(f"line {number} is neither an entry nor a head")
    return verify_chain(entries, heads, header.get("ledger_public_key"))
