"""What the CLI says of a task verified by redundancy, and of a stack whose nodes cannot make a quorum."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from koprogo_cli.nats_auth import identities
from koprogo_cli.task_progress import (
    final_line,
    progress_lines,
    replica_rows,
    task_detail,
    verification_summary,
)
from koprogo_cli.up_command import quorum_note

TASK_ID = "0b6f3d0e-5c1a-4f7e-9a2b-3c4d5e6f7a8b"


def replica(n: int, node: str, owner: str, verdict: str, flags: list[str] | None = None) -> dict[str, Any]:
    return {
        "attempt": n,
        "node_id": node,
        "owner": owner,
        "trusted": False,
        "verdict": verdict,
        "co2_grams": 0.0002,
        "flags": flags or [],
    }


def task(
    status: str, outcome: str, agreement: int, *replicas: dict[str, Any], policy: str = "quorum"
) -> dict[str, Any]:
    return {
        "id": TASK_ID,
        "task_type": "ocr_invoice",
        "status": status,
        "attempts": [
            {
                "attempt": r["attempt"],
                "node_id": r["node_id"],
                "started_at": None,
                "ended_at": None,
                "outcome": None,
            }
            for r in replicas
        ],
        "co2_grams": 0.0004,
        "verification": {
            "policy": policy,
            "quorum": 2,
            "max_replicas": 4,
            "replicas": list(replicas),
            "agreement": agreement,
            "outcome": outcome,
        },
    }


def test_waiting_says_how_many_owners_agree_each_time_it_changes() -> None:
    one = task("verifying", "pending", 1, replica(1, "pi-1", "alice", "pending"))
    assert (
        progress_lines(None, one, 1.0)[-1]
        == f"task {TASK_ID}: verifying: quorum: 1 of 2 owners agree (1.0 s)"
    )
    assert progress_lines(one, one, 2.0) == []
    two = task(
        "completed", "accepted", 2, replica(1, "pi-1", "alice", "valid"), replica(2, "pi-2", "bob", "valid")
    )
    assert progress_lines(one, two, 3.0)[-1] == f"task {TASK_ID}: completed (3.0 s)"
    assert final_line(two, 3.04).endswith("· 0.00040 g CO₂ · quorum: 2 of 2 owners agree, accepted")


def test_a_trusted_node_unchecked_and_an_unverifiable_task_are_said_as_such() -> None:
    trusted = task(
        "completed", "accepted_unchecked", 1, replica(1, "pi-1", "alice", "unchecked"), policy="trusted"
    )
    assert (
        verification_summary(trusted) == "a trusted node's result, not checked this time (accepted_unchecked)"
    )
    lost = task(
        "failed",
        "unverifiable",
        1,
        replica(1, "pi-1", "alice", "invalid"),
        replica(2, "pi-2", "bob", "invalid"),
        replica(3, "pi-3", "carol", "invalid"),
        replica(4, "pi-4", "dave", "invalid"),
    )
    assert verification_summary(lost) == "quorum: unverifiable, 1 of 2 owners agree after 4 replicas"
    assert verification_summary({"id": TASK_ID, "status": "completed"}) is None


def test_one_task_shows_its_verification_and_each_replicas_verdict() -> None:
    shown = task(
        "completed",
        "accepted",
        2,
        replica(1, "pi-1", "alice", "valid"),
        replica(2, "lazy", "mallory", "invalid"),
        replica(3, "pi-2", "bob", "flagged", ["impossible_speed"]),
    )
    fields, _attempts = task_detail(shown)
    assert ("verification", "quorum: 2 of 2 owners agree, accepted") in fields
    assert replica_rows(shown) == [
        (1, "pi-1", "alice", False, "valid", 0.0002, "-"),
        (2, "lazy", "mallory", False, "invalid", 0.0002, "-"),
        (3, "pi-2", "bob", False, "flagged", 0.0002, "impossible_speed"),
    ]
    assert replica_rows({"id": TASK_ID}) == []


def test_up_says_when_its_nodes_are_too_few_owners_for_the_quorum(tmp_path: Path) -> None:
    keys = tmp_path / "secrets" / "nats"
    assert quorum_note(tmp_path, {}) is None  # no roster: nothing known
    identities(keys, {"host-bundled": ["m1"]}, node_owners={"host-bundled": "local"})
    note = quorum_note(tmp_path, {})
    assert (
        note is not None
        and "nodes of 2 distinct owners agree (GRID_QUORUM); this stack's nodes have 1 (local)" in note
    )
    assert "taken unchecked" in note and "--owner NAME" in note
    assert quorum_note(tmp_path, {"GRID_QUORUM": "1"}) is None
    identities(keys, {"pi-cave": ["m1"]}, node_owners={"pi-cave": "alice"})
    assert quorum_note(tmp_path, {}) is None
    assert quorum_note(tmp_path, {"GRID_QUORUM": "3"}) is not None
