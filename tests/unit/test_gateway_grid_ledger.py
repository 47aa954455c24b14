"""The grid ledger's use case (`service_layer/grid.py`) over its fake: who sees which node, what a
node's balance, escrow and entries are in tokens, the solidarity fund, and the ledger's
verification and export through `token_chain` (the one way to do each)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import nkeys
import pytest

from koprogo_gateway.adapters.grid_ledger import ChainSnapshot, FakeGridLedger
from koprogo_gateway.domain.access import ADMIN, READ, WRITE, caller_from_claims
from koprogo_gateway.domain.errors import (
    ForbiddenError,
    GridLedgerBusyError,
    GridLedgerUnavailableError,
    GridNodeNotFoundError,
    InvalidQueryError,
)
from koprogo_gateway.domain.grid_view import EntryPage, NodeStanding, parse_entry_page, parse_node_id
from koprogo_gateway.service_layer.grid import GridLedgerService
from koprogo_shared import token_chain as tc
from koprogo_shared.grid_signing import Signer

LEDGER_KEY = Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
ADMIN_CALLER = caller_from_claims("ops", [], frozenset({ADMIN}))
OPERATOR = caller_from_claims("olivia", ["tilleuls"], frozenset({READ}), nodes=["pi-cave"])
MEMBER = caller_from_claims("alice", ["tilleuls"], frozenset({READ, WRITE}))
NO_READ = caller_from_claims("w", ["tilleuls"], frozenset({WRITE}), nodes=["pi-cave"])

# (debit, credit, amount_mt, kind, node, memo): pi-cave untrusted (escrow), then trusted (released);
# pi-grenier paid directly, then caught wrong (its escrow forfeited).
MOVES: list[tuple[str, str, int, str, str | None, dict[str, Any]]] = [
    ("copro:tilleuls", "escrow:pi-cave", 9000, "reward", "pi-cave", {}),
    ("copro:tilleuls", "fund:solidarity", 1000, "fund_share", "pi-cave", {}),
    ("copro:tilleuls", "fund:solidarity", 250, "co2_credit", None, {"co2_saved_grams": 2.5}),
    ("escrow:pi-cave", "node:pi-cave", 9000, "escrow_release", "pi-cave", {}),
    ("copro:de-linde", "node:pi-grenier", 4500, "reward", "pi-grenier", {}),
    ("copro:de-linde", "escrow:pi-grenier", 1200, "reward", "pi-grenier", {}),
    ("escrow:pi-grenier", "fund:solidarity", 1200, "escrow_forfeit", "pi-grenier", {}),
    ("copro:de-linde", "fund:solidarity", 125, "co2_credit", None, {"co2_saved_grams": 1.25}),
    ("copro:tilleuls", "escrow:pi-cave", 3000, "reward", "pi-cave", {}),
]


def chain(moves: list[tuple[str, str, int, str, str | None, dict[str, Any]]] = MOVES) -> list[dict[str, Any]]:
    """Entries as the ledger writes them (token_chain.entry_hash over each, chained)."""
    entries: list[dict[str, Any]] = []
    prev = tc.GENESIS
    for seq, (debit, credit, amount, kind, node, memo) in enumerate(moves, start=1):
        entry: dict[str, Any] = {
            "seq": seq,
            "entry_id": f"entry-{seq}",
            "recorded_at": T0 + timedelta(minutes=seq),
            "debit": debit,
            "credit": credit,
            "amount_mt": amount,
            "kind": kind,
            "task_id": f"00000000-0000-4000-8000-{seq:012d}",
            "node_id": node,
            "copro_id": debit.removeprefix("copro:") if debit.startswith("copro:") else None,
            "memo": memo,
            "prev_hash": prev,
        }
        entry["hash"] = tc.entry_hash(entry)
        prev = entry["hash"]
        entries.append(entry)
    return entries


def head(entries: list[dict[str, Any]], seq: int) -> dict[str, Any]:
    hash_ = entries[seq - 1]["hash"]
    return {
        "seq": seq,
        "hash": hash_,
        "signed_at": T0 + timedelta(hours=1),
        "signer": LEDGER_KEY.public_key,
        "signature": LEDGER_KEY.sign(tc.head_payload(seq, hash_)),
    }


def standing(node_id: str, owner: str, *, trusted: bool, validated: int, invalid: int = 0) -> NodeStanding:
    return NodeStanding(
        node_id=node_id,
        owner=owner,
        trusted=trusted,
        valid_streak=validated if trusted else 0,
        validated=validated,
        invalid=invalid,
        refused=0,
        flagged=1 if invalid else 0,
        updated_at=T0,
        balance_mt=0,
        escrow_mt=0,
    )


def ledger() -> FakeGridLedger:
    entries = chain()
    return FakeGridLedger(
        standings={
            "pi-cave": standing("pi-cave", "olivia", trusted=True, validated=6),
            "pi-grenier": standing("pi-grenier", "bert", trusted=False, validated=2, invalid=1),
            "pi-new": standing("pi-new", "carla", trusted=False, validated=0),
        },
        entries=entries,
        heads=[head(entries, 4), head(entries, 9)],
        key=LEDGER_KEY.public_key,
    )


async def test_an_admin_sees_every_node_with_its_balance_and_escrow_in_tokens() -> None:
    nodes = (await GridLedgerService(ledger()).nodes(ADMIN_CALLER)).nodes

    assert [n.node_id for n in nodes] == ["pi-cave", "pi-grenier", "pi-new"]
    cave, grenier, new = nodes
    assert (cave.owner, cave.trusted, cave.valid_streak, cave.validated) == ("olivia", True, 6, 6)
    assert (cave.balance, cave.escrow) == (9.0, 3.0)
    assert (grenier.balance, grenier.escrow, grenier.invalid, grenier.flagged) == (4.5, 0.0, 1, 1)
    assert (new.balance, new.escrow) == (0.0, 0.0)


async def test_a_node_operator_sees_only_the_nodes_its_token_names() -> None:
    nodes = (await GridLedgerService(ledger()).nodes(OPERATOR)).nodes
    assert [(n.node_id, n.balance, n.escrow) for n in nodes] == [("pi-cave", 9.0, 3.0)]


async def test_a_member_without_nodes_is_refused_the_node_list_saying_why() -> None:
    with pytest.raises(ForbiddenError) as refused:
        await GridLedgerService(ledger()).nodes(MEMBER)
    assert "names no node" in refused.value.message and "--node" in refused.value.message
    with pytest.raises(ForbiddenError) as no_read:
        await GridLedgerService(ledger()).nodes(NO_READ)
    assert "mcp:read" in no_read.value.message


async def test_a_nodes_balance_lists_its_entries_newest_first_page_by_page() -> None:
    service = GridLedgerService(ledger())

    first = await service.node_balance(OPERATOR, "pi-cave", EntryPage(limit=2))
    second = await service.node_balance(
        OPERATOR, "pi-cave", EntryPage(limit=2, before_seq=first.next_before_seq)
    )

    assert (first.balance, first.escrow) == (9.0, 3.0)
    assert [e.seq for e in first.entries] == [9, 4] and first.next_before_seq == 4
    assert [e.seq for e in second.entries] == [1] and second.next_before_seq is None
    release = first.entries[1]
    assert (release.kind, release.debit, release.credit, release.amount, release.amount_mt) == (
        "escrow_release",
        "escrow:pi-cave",
        "node:pi-cave",
        9.0,
        9000,
    )


async def test_another_operators_node_and_an_unknown_node_are_not_found() -> None:
    service = GridLedgerService(ledger())
    with pytest.raises(GridNodeNotFoundError):
        await service.node_balance(OPERATOR, "pi-grenier", EntryPage())
    with pytest.raises(GridNodeNotFoundError):
        await service.node_balance(ADMIN_CALLER, "pi-nowhere", EntryPage())
    with pytest.raises(ForbiddenError):
        await service.node_balance(MEMBER, "pi-cave", EntryPage())
    # A node with a standing but no entry yet is found, with nothing.
    new = await service.node_balance(ADMIN_CALLER, "pi-new", EntryPage())
    assert (new.balance, new.escrow, new.entries, new.next_before_seq) == (0.0, 0.0, [], None)


async def test_the_solidarity_fund_shows_its_inflows_by_kind_and_the_co2_they_stand_for() -> None:
    fund = await GridLedgerService(ledger()).solidarity_fund(MEMBER)

    assert fund.balance == 2.575
    assert fund.inflows == {"fund_share": 1.0, "co2_credit": 0.375, "escrow_forfeit": 1.2}
    assert fund.co2_saved_kg == pytest.approx(0.00375)
    empty = await GridLedgerService(FakeGridLedger()).solidarity_fund(MEMBER)
    assert (empty.balance, empty.inflows, empty.co2_saved_kg) == (
        0.0,
        {"fund_share": 0.0, "co2_credit": 0.0, "escrow_forfeit": 0.0},
        0.0,
    )


async def test_verify_passes_on_an_intact_chain_and_names_the_entry_altered() -> None:
    book = ledger()
    service = GridLedgerService(book)

    intact = await service.verify(MEMBER)
    assert intact.ok and intact.reason is None
    assert (intact.entries, intact.signed_heads, intact.balances_sum_tokens) == (9, 2, 0.0)
    assert intact.head is not None and intact.head.seq == 9 and intact.head.hash == book.entries[-1]["hash"]
    assert intact.ledger_public_key == LEDGER_KEY.public_key

    book.entries[4] = {**book.entries[4], "amount_mt": 45000}
    altered = await service.verify(MEMBER)
    assert not altered.ok
    assert altered.broken_at == 5 and "altered" in (altered.reason or "")


async def test_verify_refuses_heads_signed_by_another_key() -> None:
    book = ledger()
    book.key = Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)).public_key
    report = await GridLedgerService(book).verify(MEMBER)
    assert not report.ok and report.broken_at == 4 and "signature" in (report.reason or "")


async def test_the_export_is_token_chains_lines_and_verifies_offline() -> None:
    book = ledger()
    service = GridLedgerService(book)

    chunks = [chunk async for chunk in await service.export(MEMBER)]
    lines = b"".join(chunks).decode().splitlines()

    assert lines == list(tc.export_lines(book.entries, book.heads, book.key))
    assert json.loads(lines[0]) == {"format": tc.EXPORT_FORMAT, "ledger_public_key": LEDGER_KEY.public_key}
    assert tc.verify_export(lines).ok
    book.entries[2] = {**book.entries[2], "credit": "node:pi-cave"}
    tampered = b"".join([c async for c in await service.export(MEMBER)]).decode().splitlines()
    assert tc.verify_export(tampered).broken_at == 3


async def test_an_unreachable_ledger_is_a_503_for_every_read() -> None:
    service = GridLedgerService(replace(ledger(), unavailable=True))
    for call in (
        service.nodes(ADMIN_CALLER),
        service.node_balance(ADMIN_CALLER, "pi-cave", EntryPage()),
        service.solidarity_fund(MEMBER),
        service.verify(MEMBER),
        service.export(MEMBER),
    ):
        with pytest.raises(GridLedgerUnavailableError):
            await call


class SlowChainLedger(FakeGridLedger):
    """A chain whose snapshot is held until `release` is set: a long verification."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.inside = asyncio.Event()

    @asynccontextmanager
    async def chain(self) -> AsyncIterator[ChainSnapshot]:
        self.inside.set()
        await self.release.wait()
        yield ChainSnapshot(None, [], [])


async def test_verifications_beyond_the_readers_allowed_wait_then_are_refused_as_busy() -> None:
    book = SlowChainLedger()
    service = GridLedgerService(book, max_chain_readers=1, chain_wait_s=0.2)
    first = asyncio.create_task(service.verify(MEMBER))
    await book.inside.wait()

    with pytest.raises(GridLedgerBusyError) as busy:
        await service.verify(MEMBER)
    with pytest.raises(GridLedgerBusyError):
        await service.export(MEMBER)
    book.release.set()
    assert (await first).ok
    assert busy.value.status == 503 and busy.value.headers["Retry-After"]
    # The reader is free again.
    assert (await service.verify(MEMBER)).ok


def test_entry_pages_are_parsed_and_bad_values_named() -> None:
    assert parse_entry_page(None, None) == EntryPage(limit=50, before_seq=None)
    assert parse_entry_page("10", "42") == EntryPage(limit=10, before_seq=42)
    for limit, before, named in (("0", None, "limit"), ("501", None, "limit"), ("x", None, "limit"),
                                 (None, "0", "before_seq"), (None, "1.5", "before_seq"),
                                 (None, str(2**63), "before_seq")):  # fmt: skip
        with pytest.raises(InvalidQueryError) as refused:
            parse_entry_page(limit, before)
        assert named in refused.value.message


def test_a_node_id_with_a_nul_is_refused_before_any_query() -> None:
    assert parse_node_id("pi-cave.é") == "pi-cave.é"
    with pytest.raises(InvalidQueryError):
        parse_node_id("pi\x00cave")
