"""token_chain: the token ledger's hash chain, its signed heads and its export, verified offline."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import nkeys
import pytest

from koprogo_shared import grid_signing as g
from koprogo_shared import token_chain as tc

LEDGER = g.Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))
T0 = datetime(2026, 3, 18, 10, 0, tzinfo=UTC)

# (debit, credit, amount_mt, kind): a reward paid by a copro and its fund share, the CO2 credit,
# an escrow released, then a forfeit.
MOVES = [
    ("copro:c1", "escrow:node-a", 9000, "reward"),
    ("copro:c1", "fund:solidarity", 1000, "fund_share"),
    ("copro:c1", "fund:solidarity", 250, "co2_credit"),
    ("escrow:node-a", "node:node-a", 9000, "escrow_release"),
    ("node:node-a", "fund:solidarity", 500, "escrow_forfeit"),
]


def _chain(moves: list[tuple[str, str, int, str]] = MOVES) -> list[dict[str, Any]]:
    """Entries as the ledger writes them: each hashed over its fields and the previous hash."""
    entries: list[dict[str, Any]] = []
    prev = tc.GENESIS
    for seq, (debit, credit, amount, kind) in enumerate(moves, start=1):
        entry: dict[str, Any] = {
            "seq": seq,
            "entry_id": f"e{seq}",
            "recorded_at": T0 + timedelta(seconds=seq),
            "debit": debit,
            "credit": credit,
            "amount_mt": amount,
            "kind": kind,
            "task_id": "t1",
            "node_id": "node-a",
            "copro_id": "c1",
            "memo": None,
            "prev_hash": prev,
        }
        entry["hash"] = tc.entry_hash(entry)
        prev = entry["hash"]
        entries.append(entry)
    return entries


def _rehash_from(entries: list[dict[str, Any]], start: int) -> None:
    """Recompute every hash from entry `start` (1-based) on: what a forger with database access does."""
    prev = tc.GENESIS if start == 1 else entries[start - 2]["hash"]
    for entry in entries[start - 1 :]:
        entry["prev_hash"] = prev
        entry["hash"] = tc.entry_hash(entry)
        prev = entry["hash"]


def _head(entries: list[dict[str, Any]], seq: int, signer: g.Signer = LEDGER) -> dict[str, Any]:
    hash_ = entries[seq - 1]["hash"]
    return {
        "seq": seq,
        "hash": hash_,
        "signed_at": T0 + timedelta(minutes=seq),
        "signature": signer.sign(tc.head_payload(seq, hash_)),
    }


def test_a_chain_of_five_entries_with_a_signed_head_verifies() -> None:
    entries = _chain()
    report = tc.verify_chain(entries, [_head(entries, 3), _head(entries, 5)], LEDGER.public_key)
    assert report.ok, report.reason
    assert (report.entries, report.heads, report.head_seq) == (5, 2, 5)
    assert report.head_hash == entries[-1]["hash"]
    assert report.balances_sum_mt == 0 and report.broken_at is None
    assert report.as_json()["head"] == {"seq": 5, "hash": entries[-1]["hash"]}


def test_an_empty_chain_is_sound() -> None:
    report = tc.verify_chain([], [], None)
    assert report.ok and report.entries == 0 and report.head_seq is None


def test_an_altered_amount_names_its_entry() -> None:
    entries = _chain()
    entries[2]["amount_mt"] = 25_000
    report = tc.verify_chain(entries, [], LEDGER.public_key)
    assert not report.ok
    assert report.broken_at == 3
    assert report.reason is not None and "entry 3" in report.reason and "altered" in report.reason


def test_an_altered_field_other_than_the_amount_names_its_entry() -> None:
    entries = _chain()
    entries[1]["credit"] = "node:node-a"  # the fund share diverted to the node
    report = tc.verify_chain(entries, [], LEDGER.public_key)
    assert not report.ok and report.broken_at == 2


def test_a_removed_entry_is_caught() -> None:
    entries = _chain()
    del entries[1]
    report = tc.verify_chain(entries, [], LEDGER.public_key)
    assert not report.ok
    assert report.broken_at == 3  # the entry found where seq 2 should be
    assert report.reason is not None and "missing" in report.reason


def test_a_removed_last_entry_is_caught_by_a_signed_head() -> None:
    entries = _chain()
    head = _head(entries, 5)
    report = tc.verify_chain(entries[:4], [head], LEDGER.public_key)
    assert not report.ok and report.broken_at == 5
    assert report.reason is not None and "removed" in report.reason


def test_history_rewritten_with_recomputed_hashes_is_caught_by_a_signed_head() -> None:
    entries = _chain()
    heads = [_head(entries, 4)]
    entries[1]["amount_mt"] = 1  # the fund's share cut, and the copro's debit with it
    _rehash_from(entries, 2)
    # Without heads the forged chain is self-consistent: only the signed head can tell.
    assert tc.verify_chain(entries, [], LEDGER.public_key).ok
    report = tc.verify_chain(entries, heads, LEDGER.public_key)
    assert not report.ok
    assert report.broken_at == 4
    assert report.reason is not None and "rewritten" in report.reason


def test_a_head_signed_by_another_key_or_without_the_ledger_key_fails() -> None:
    entries = _chain()
    other = g.Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))
    forged = tc.verify_chain(entries, [_head(entries, 5, other)], LEDGER.public_key)
    assert not forged.ok and forged.broken_at == 5 and forged.reason is not None
    assert "signature" in forged.reason
    keyless = tc.verify_chain(entries, [_head(entries, 5)], None)
    assert not keyless.ok and keyless.reason is not None and "no ledger public key" in keyless.reason


def test_the_earliest_failure_is_reported() -> None:
    entries = _chain()
    heads = [_head(entries, 2)]
    entries[0]["amount_mt"] = 7  # breaks entry 1's hash, which is also before the head
    report = tc.verify_chain(entries, heads, LEDGER.public_key)
    assert report.broken_at == 1


def test_balances_sum_to_zero_and_non_movements_fail() -> None:
    # Each entry debits and credits one amount, so the balances recomputed from the chain sum to
    # zero by construction (verify_chain's "balances sum" check cannot fail on a chain alone; it
    # would on stored balances compared with the chain, which token_chain does not take). What can
    # break double entry within a chain is an entry that is not a movement:
    report_ok = tc.verify_chain(_chain(), [], LEDGER.public_key)
    assert report_ok.ok and report_ok.balances_sum_mt == 0
    same_account = _chain([("copro:c1", "copro:c1", 100, "reward")])
    report = tc.verify_chain(same_account, [], LEDGER.public_key)
    assert not report.ok and report.broken_at == 1 and "not a movement" in str(report.reason)
    for amount in (0, -100):
        later = _chain([*MOVES[:2], ("copro:c1", "node:node-a", amount, "reward")])
        report = tc.verify_chain(later, [], LEDGER.public_key)
        assert not report.ok and report.broken_at == 3 and "not a movement" in str(report.reason)


def test_export_then_verify_export_round_trips() -> None:
    entries = _chain()
    heads = [_head(entries, 2), _head(entries, 5)]
    lines = list(tc.export_lines(entries, heads, LEDGER.public_key))
    assert json.loads(lines[0]) == {"format": tc.EXPORT_FORMAT, "ledger_public_key": LEDGER.public_key}
    assert len(lines) == 1 + 5 + 2
    # Written to a file and read back, newlines and a trailing blank line included.
    text = "\n".join(lines) + "\n\n"
    report = tc.verify_export(text.splitlines())
    assert report.ok, report.reason
    assert (report.entries, report.heads, report.head_hash) == (5, 2, entries[-1]["hash"])


def test_an_export_edited_by_hand_names_the_entry() -> None:
    entries = _chain()
    lines = list(tc.export_lines(entries, [_head(entries, 5)], LEDGER.public_key))
    item = json.loads(lines[3])  # entry 3
    item["entry"]["amount_mt"] += 1
    lines[3] = json.dumps(item)
    report = tc.verify_export(lines)
    assert not report.ok and report.broken_at == 3


def test_an_export_whose_key_was_swapped_fails_at_its_heads() -> None:
    entries = _chain()
    lines = list(tc.export_lines(entries, [_head(entries, 5)], LEDGER.public_key))
    other = g.Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))
    lines[0] = json.dumps({"format": tc.EXPORT_FORMAT, "ledger_public_key": other.public_key})
    report = tc.verify_export(lines)
    assert not report.ok and report.broken_at == 5


def test_what_is_not_an_export_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no header"):
        tc.verify_export([])
    with pytest.raises(ValueError, match="format"):
        tc.verify_export([json.dumps({"format": "something-else"})])
    header = json.dumps({"format": tc.EXPORT_FORMAT, "ledger_public_key": None})
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        tc.verify_export([header, "{oops"])
    with pytest.raises(ValueError, match="line 2 is neither"):
        tc.verify_export([header, json.dumps({"row": 1})])
