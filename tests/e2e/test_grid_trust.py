"""The grid's trust end to end (docs/grid-trust.md, issue 14), with several real node processes.

Each scenario runs its own stack (`grid_trust_support`): a keyed nats-server, the ledger on
PostgreSQL, the grid scheduler, the gateway, honest nodes (`koprogo-node --grid`, the bundled
model) of distinct owners and cheating nodes (`tests/grid_cheaters.py`). Everything is read
through the gateway, as a member would: tasks and their verification, nodes, balances, the
solidarity fund, and the ledger's verification, which every scenario leaves balanced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from koprogo_shared.grid_signing import result_digest
from tests.e2e.grid_trust_support import (
    COPRO,
    TRANSLATION,
    X86,
    GridTrustStack,
    NodeSpec,
    charges,
    cheater,
    honest,
    night_place,
    replicas_by_node,
    start_grid_trust_stack,
    tokens,
)

pytestmark = pytest.mark.timeout(180)


async def stack_of(database_url: str, tmp_path: Path, specs: list[NodeSpec], **kw: Any) -> GridTrustStack:
    return await start_grid_trust_stack(database_url, tmp_path, specs, **kw)


async def run_tasks(
    stack: GridTrustStack, count: int, *, translation: bool = False, first: int = 0
) -> list[dict[str, Any]]:
    """Submit `count` forecasts (and a translation) at once; each once final."""
    ids = [await stack.submit("predict_expenses", charges(i)) for i in range(first, first + count)]
    if translation:
        ids.append(await stack.submit("translate_document", TRANSLATION))
    return list(await asyncio.gather(*(stack.finished(t, timeout=90) for t in ids)))


async def run_tasks_involving(
    stack: GridTrustStack, cheaters: set[str], count: int, *, more: int = 3
) -> list[dict[str, Any]]:
    """`count` forecasts, then batches of `more` (three at most) until one of `cheaters` served a
    replica: which node polls first is not ours to choose, and a scenario it never touched would
    prove nothing."""
    done = await run_tasks(stack, count)
    for batch in range(3):
        if any(cheaters & set(replicas_by_node(task)) for task in done):
            break
        done += await run_tasks(stack, more, first=count + batch * more)
    return done


def assert_accepted_by_quorum(task: dict[str, Any], quorum: int = 2) -> dict[str, Any]:
    """Completed, accepted by `quorum` distinct owners, its result the agreeing replicas' one."""
    assert task["status"] == "completed", json.dumps(task, indent=1)
    verification = task["verification"]
    assert verification is not None, task
    assert verification["outcome"] == "accepted", verification
    assert verification["agreement"] == quorum, verification
    valid = [r for r in verification["replicas"] if r["verdict"] == "valid"]
    assert len({r["owner"] for r in valid}) == quorum, verification
    # The result the task holds is the one the valid replicas reported (signed digests).
    assert {r["result_digest"] for r in valid} == {result_digest(task["result"])}, verification
    # Two nodes of one operator never both serve one task.
    owners = [r["owner"] for r in verification["replicas"]]
    assert len(owners) == len(set(owners)), verification
    verification_of: dict[str, Any] = verification
    return verification_of


async def assert_never_paid(stack: GridTrustStack, node_id: str) -> dict[str, Any]:
    nodes = await stack.grid_nodes()
    assert node_id in nodes, nodes
    listed = nodes[node_id]
    assert tokens(listed["balance"]) == 0 and tokens(listed["escrow"]) == 0, listed
    balance = await stack.balance(node_id)
    assert tokens(balance["balance"]) == 0 and tokens(balance["escrow"]) == 0, balance
    rewards = [e for e in balance["entries"] if e.get("kind") in ("reward", "escrow_release")]
    assert rewards == [], balance
    return listed


def inflows(fund: dict[str, Any]) -> dict[str, float]:
    return {k: tokens(v) for k, v in fund["inflows"].items()}


async def test_an_honest_run_pays_every_node_and_the_fund_and_the_ledger_sums_to_zero(
    database_url: str, tmp_path: Path
) -> None:
    specs = [honest("h-alice", "alice"), honest("h-bob", "bob"), honest("h-carol", "carol")]
    stack = await stack_of(database_url, tmp_path, specs)
    try:
        done = await run_tasks(stack, 6, translation=True)
        for task in done:
            assert_accepted_by_quorum(task)
            assert all(r["verdict"] == "valid" for r in task["verification"]["replicas"]), task
        translated = done[-1]
        assert translated["result"]["text"].strip(), translated
        # The CO2 of a task is its replicas' attested CO2 (redundancy is counted).
        for task in done:
            attested = sum(r["co2_grams"] for r in task["verification"]["replicas"])
            assert task["co2_grams"] == pytest.approx(attested, rel=1e-6, abs=1e-9), task

        served = {n for task in done for n in replicas_by_node(task)}
        assert served == {s.node_id for s in specs}, served

        async def paid() -> dict[str, dict[str, Any]] | None:
            nodes = await stack.grid_nodes()
            ok = all(tokens(nodes[n]["balance"]) + tokens(nodes[n]["escrow"]) > 0 for n in served)
            return nodes if ok else None

        nodes = await stack.wait_for("every node that did valid work is paid", paid, timeout=30)
        for node_id in served:
            listed = nodes[node_id]
            assert listed["validated"] >= 1 and listed["invalid"] == 0, listed
            assert listed["owner"] == stack.specs[node_id].owner, listed
        trusted = [n for n in served if nodes[n]["trusted"]]
        assert trusted, nodes  # 14 valid replicas over 3 nodes, trust after 2
        for node_id in trusted:
            # Its rewards sat in escrow while it was untrusted, and were released when it earned trust.
            balance = await stack.balance(node_id)
            kinds = [e["kind"] for e in balance["entries"]]
            assert "escrow_release" in kinds, balance
            assert tokens(balance["balance"]) > 0, balance

        fund = await stack.fund()
        assert tokens(fund["balance"]) > 0, fund
        assert inflows(fund).get("fund_share", 0) > 0, fund
        # The translation's tokens would have cost the cloud more CO2 than the nodes emitted.
        assert inflows(fund).get("co2_credit", 0) > 0, fund
        report = await stack.assert_ledger_balanced()
        assert report["entries"] > 0 and report["signed_heads"] >= 1, report
        # /stats: what the copro paid the grid's nodes is what the nodes hold (nothing forfeited).
        stats = await stack.get("/mcp/v1/stats", context=f"copro:{COPRO}")
        nodes = await stack.grid_nodes()
        held = sum(tokens(n["balance"]) + tokens(n["escrow"]) for n in nodes.values())
        assert stats["grid_token_revenue"] == pytest.approx(held, abs=1e-9), (stats, nodes)
        assert stats["grid_token_revenue"] > 0, stats
    finally:
        await stack.stop()


async def test_a_lazy_node_is_never_paid_and_the_honest_result_wins(
    database_url: str, tmp_path: Path
) -> None:
    specs = [honest("h-alice", "alice"), honest("h-bob", "bob"), cheater("lazy-1", "mallory", "lazy")]
    stack = await stack_of(database_url, tmp_path, specs)
    try:
        done = await run_tasks_involving(stack, {"lazy-1"}, 6)
        lazy_replicas = []
        for i, task in enumerate(done):
            assert_accepted_by_quorum(task)
            mine = replicas_by_node(task).get("lazy-1", [])
            assert all(r["verdict"] == "invalid" for r in mine), task["verification"]
            lazy_replicas += mine
            # The honest forecast: the horizon asked, every category forecast that far.
            horizon = charges(i)["horizon_months"]
            assert task["result"]["horizon_months"] == horizon, task["result"]
            assert all(len(c["forecast"]) == horizon for c in task["result"]["categories"].values())
        # Garbage fast: it took work (else this proves nothing), all of it judged invalid.
        assert lazy_replicas, [t["verification"] for t in done]
        listed = await assert_never_paid(stack, "lazy-1")
        assert listed["invalid"] >= len(lazy_replicas) and listed["validated"] == 0, listed
        assert listed["trusted"] is False, listed
        await stack.assert_ledger_balanced()
    finally:
        await stack.stop()


async def test_two_colluding_nodes_of_one_owner_never_make_a_quorum_nor_get_paid(
    database_url: str, tmp_path: Path
) -> None:
    specs = [
        cheater("wrong-1", "mallory", "wrong"),
        cheater("wrong-2", "mallory", "wrong"),
        honest("h-alice", "alice"),
        honest("h-bob", "bob"),
    ]
    stack = await stack_of(database_url, tmp_path, specs)
    try:
        colluders = {"wrong-1", "wrong-2"}
        done = await run_tasks_involving(stack, colluders, 6)
        wrong_replicas = []
        for task in done:
            verification = assert_accepted_by_quorum(task)
            by_node = replicas_by_node(task)
            assert not colluders <= set(by_node), verification  # never both on one task
            for node_id in colluders & set(by_node):
                assert all(r["verdict"] == "invalid" for r in by_node[node_id]), verification
                wrong_replicas += by_node[node_id]
            assert {r["owner"] for r in verification["replicas"] if r["verdict"] == "valid"} == {
                "alice",
                "bob",
            }, verification
        assert wrong_replicas, [t["verification"] for t in done]
        for node_id in colluders:
            listed = await assert_never_paid(stack, node_id)
            assert listed["validated"] == 0 and listed["trusted"] is False, listed
        await stack.assert_ledger_balanced()
    finally:
        await stack.stop()


async def test_a_trusted_node_caught_wrong_loses_its_trust_and_its_escrow_to_the_fund(
    database_url: str, tmp_path: Path
) -> None:
    """It earns trust honestly (2 valid results by quorum); trusted and never spot-checked (rate 0)
    its next results go unchecked and their rewards into escrow; then, with spot checks at rate 1,
    the same node (same id, same key) answers wrong: caught, untrusted, escrow forfeited to the fund."""
    turncoat = honest("t-tess", "tess")
    specs = [turncoat, honest("h-alice", "alice"), honest("h-bob", "bob")]
    stack = await stack_of(
        database_url, tmp_path, specs, grid_settings={"GRID_SPOT_CHECK_RATE": "0"}, start_nodes=False
    )
    try:
        await stack.start_nodes("t-tess", "h-alice")
        for i in range(2):  # only two owners up: each task is replicated to both
            task = await stack.finished(await stack.submit("predict_expenses", charges(i)))
            assert_accepted_by_quorum(task)
        nodes = await stack.wait_for(
            "t-tess earns trust", lambda: _when(stack, lambda n: n["t-tess"]["trusted"]), timeout=30
        )
        assert nodes["t-tess"]["validated"] >= 2, nodes

        await stack.stop_nodes("h-alice")  # alone, trusted, never spot-checked: unchecked
        unchecked = []
        for i in range(2, 4):
            unchecked.append(await stack.submit("predict_expenses", charges(i)))
            task = await stack.finished(unchecked[-1])
            assert task["status"] == "completed", task
            assert task["verification"]["policy"] == "trusted", task["verification"]
            assert task["verification"]["outcome"] == "accepted_unchecked", task["verification"]
        before = await stack.wait_for(
            "t-tess's unchecked rewards in escrow",
            lambda: _when(stack, lambda n: tokens(n["t-tess"]["escrow"]) > 0),
            timeout=30,
        )
        escrow_before = tokens(before["t-tess"]["escrow"])
        forfeited_before = inflows(await stack.fund()).get("escrow_forfeit", 0)

        await stack.restart_scheduler(GRID_SPOT_CHECK_RATE="1")
        await stack.replace_node(NodeSpec("t-tess", "tess", "wrong"), start=False)
        await stack.start_nodes("t-tess", "h-alice", "h-bob")
        ids = [await stack.submit("predict_expenses", charges(10 + i)) for i in range(3)]
        caught = await stack.wait_for(
            "t-tess caught wrong",
            lambda: _when(stack, lambda n: not n["t-tess"]["trusted"] and n["t-tess"]["invalid"] >= 1),
            timeout=60,
        )
        # Caught, it goes offline: nothing it does from now on moves its standing.
        await stack.stop_nodes("t-tess")
        for task_id in ids:
            task = await stack.finished(task_id, timeout=60)
            verification = assert_accepted_by_quorum(task)
            assert verification["policy"] in ("spot_check", "quorum"), verification
            for replica in replicas_by_node(task).get("t-tess", []):
                assert replica["verdict"] == "invalid", verification

        async def forfeited() -> dict[str, Any] | None:
            fund = await stack.fund()
            nodes = await stack.grid_nodes()
            gone = tokens(nodes["t-tess"]["escrow"]) == 0
            return (
                fund
                if gone and inflows(fund).get("escrow_forfeit", 0) >= forfeited_before + escrow_before
                else None
            )

        fund = await stack.wait_for("t-tess's escrow forfeited to the fund", forfeited, timeout=30)
        assert caught["t-tess"]["trusted"] is False

        # What it delivered unchecked is checked again by a quorum of the others (those results
        # were right: it turned later); being right back then earns it no trust back now (its
        # trust run starts again with results it delivers after being caught).
        async def rechecked() -> list[dict[str, Any]] | None:
            tasks = [await stack.task(t) for t in unchecked]
            done = all(
                t["verification"]["policy"] == "quorum" and t["verification"]["outcome"] == "accepted"
                for t in tasks
            )
            return tasks if done else None

        async def show_unchecked() -> str:
            return json.dumps([(await stack.task(t))["verification"] for t in unchecked], indent=1)

        for task in await stack.wait_for(
            "t-tess's unchecked results re-checked", rechecked, timeout=40, show=show_unchecked
        ):
            assert task["status"] == "completed", task
            assert_accepted_by_quorum(task)
        after = await stack.grid_nodes()
        assert after["t-tess"]["trusted"] is False, after["t-tess"]
        assert tokens(after["t-tess"]["escrow"]) == 0, after["t-tess"]
        balance = await stack.balance("t-tess")
        assert "escrow_forfeit" in [e["kind"] for e in balance["entries"]], balance
        assert tokens(fund["balance"]) > 0, fund
        await stack.assert_ledger_balanced()
    finally:
        await stack.stop()


async def _when(stack: GridTrustStack, condition: Any) -> dict[str, dict[str, Any]] | None:
    nodes = await stack.grid_nodes()
    try:
        return nodes if condition(nodes) else None
    except KeyError:
        return None


async def test_a_node_signing_with_a_foreign_key_is_refused_and_earns_nothing(
    database_url: str, tmp_path: Path
) -> None:
    specs = [honest("h-alice", "alice"), honest("h-bob", "bob"), cheater("replay-1", "mallory", "replay")]
    stack = await stack_of(database_url, tmp_path, specs)
    try:
        done = await run_tasks_involving(stack, {"replay-1"}, 4)
        refused = []
        for task in done:
            assert_accepted_by_quorum(task)
            mine = replicas_by_node(task).get("replay-1", [])
            assert all(r["verdict"] == "refused" for r in mine), task["verification"]
            refused += mine
            outcomes = {a["outcome"] for a in task["attempts"] if a["node_id"] == "replay-1"}
            assert outcomes <= {"refused"}, task["attempts"]
        assert refused, [t["verification"] for t in done]
        listed = await stack.wait_for(
            "replay-1's refusals counted",
            lambda: _when(stack, lambda n: n["replay-1"]["refused"] >= len(refused)),
            timeout=30,
        )
        assert listed["replay-1"]["trusted"] is False and listed["replay-1"]["validated"] == 0, listed
        await assert_never_paid(stack, "replay-1")
        await stack.assert_ledger_balanced()
    finally:
        await stack.stop()


async def test_an_implausible_energy_attestation_earns_nothing_and_the_task_still_completes(
    database_url: str, tmp_path: Path
) -> None:
    """The greenwasher runs the honest code but signs solar output at its declared place's night."""
    latitude, longitude = night_place()
    night = dataclasses.replace(X86, latitude=latitude, longitude=longitude)
    specs = [
        honest("h-alice", "alice"),
        honest("h-bob", "bob"),
        cheater("green-1", "gaia", "greenwash", device=night),
    ]
    stack = await stack_of(database_url, tmp_path, specs)
    try:
        done = await run_tasks_involving(stack, {"green-1"}, 4)
        flagged = []
        for task in done:
            assert task["status"] == "completed", task
            verification = task["verification"]
            assert verification["outcome"] == "accepted", verification
            assert verification["agreement"] >= 2, verification
            for replica in replicas_by_node(task).get("green-1", []):
                assert replica["verdict"] == "flagged", verification
                assert "solar_at_night" in replica["flags"], replica
                flagged.append(replica)
        assert flagged, [t["verification"] for t in done]
        listed = await stack.wait_for(
            "green-1's flags counted",
            lambda: _when(stack, lambda n: n["green-1"]["flagged"] >= len(flagged)),
            timeout=30,
        )
        assert listed["green-1"]["trusted"] is False, listed
        await assert_never_paid(stack, "green-1")
        await stack.assert_ledger_balanced()
    finally:
        await stack.stop()


def koprogo_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The `koprogo` command as a member runs it (in `cwd`, so no ./data dev token is picked up)."""
    return subprocess.run(
        [sys.executable, "-m", "koprogo_cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_an_entry_altered_in_postgresql_fails_the_verification_naming_it(
    database_url: str, tmp_path: Path
) -> None:
    specs = [honest("h-alice", "alice"), honest("h-bob", "bob")]
    stack = await stack_of(database_url, tmp_path, specs)
    try:
        for task in await run_tasks(stack, 2):
            assert_accepted_by_quorum(task)
        before = await stack.assert_ledger_balanced()
        assert before["entries"] >= 3, before
        conn = await asyncpg.connect(database_url)
        try:
            seq = int(await conn.fetchval("SELECT min(seq) FROM grid_ledger_entries WHERE kind = 'reward'"))
            # The ledger's triggers refuse an UPDATE: an intruder with the database's owner rights
            # switches them off first, as the check does by hand.
            await conn.execute("ALTER TABLE grid_ledger_entries DISABLE TRIGGER ALL")
            await conn.execute(
                "UPDATE grid_ledger_entries SET amount_mt = amount_mt + 1000 WHERE seq = $1", seq
            )
            await conn.execute("ALTER TABLE grid_ledger_entries ENABLE TRIGGER ALL")
        finally:
            await conn.close()

        report = await stack.verify()
        assert report["ok"] is False, report
        assert report["broken_at"] == seq, report
        assert str(seq) in report["reason"], report

        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NATS_URL", "DATABASE_URL", "KOPROGO_TOKEN", "KOPROGO_DATA_DIR")
        } | {"KOPROGO_URL": stack.gateway_url}
        export = tmp_path / "ledger-export.jsonl"
        exported = await asyncio.to_thread(
            koprogo_cli, "ledger", "export", "-o", str(export), env=env, cwd=tmp_path
        )
        assert exported.returncode == 0, exported.stdout + exported.stderr
        assert export.stat().st_size > 0
        checked = await asyncio.to_thread(
            koprogo_cli, "ledger", "verify", "--export", str(export), env=env, cwd=tmp_path
        )
        assert checked.returncode != 0, checked.stdout + checked.stderr
        assert f"entry {seq}" in checked.stdout + checked.stderr, checked.stdout + checked.stderr
    finally:
        await stack.stop()
