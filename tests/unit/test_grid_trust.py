"""Verification by redundancy, signatures and the trust book (docs/grid-trust.md), over fakes.

Nodes sign with real nkeys; results are compared with the real comparators (identical results
agree, different values disagree) and attestations checked by the real Proof of Green rules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import pytest

from koprogo_grid.domain.rules import GridRules
from koprogo_grid.domain.task_state import TaskState
from koprogo_grid.domain.trust import Judgment, NodeStanding, TrustBook
from koprogo_grid.domain.verification import (
    Vote,
    groups,
    reachable,
    replicas_wanted,
    short_of_owners,
    spot_check_drawn,
    tally,
)
from koprogo_grid.service_layer.ports import FakeTaskDocumentBin
from koprogo_shared import subjects
from koprogo_shared.grid_signing import sign_report
from koprogo_shared.node_roster import NodeGrant
from koprogo_shared.task_events import (
    NodeTrustChanged,
    TaskCancelRequested,
    TaskVerification,
    task_event_id,
)
from tests.unit.test_grid_scheduler import T0, Grid, attestation, new_signer, task


def invoice(total: str, iban: str = "BE71 0961 2345 6769") -> dict[str, Any]:
    """An ocr_invoice result: the comparator reads the fields' values."""
    return {"fields": {"total_incl_vat": {"value": total, "confidence": 0.9}, "iban": {"value": iban}}}


HONEST = invoice("121.00")
GARBAGE = invoice("0.00", "nonsense")


def rules(**changes: Any) -> GridRules:
    values: dict[str, Any] = {"max_attempts": 3, "start_grace_s": 10, "quorum": 2, "max_replicas": 4}
    return GridRules(**(values | changes))


def trust_events(grid: Grid, node_id: str | None = None) -> list[NodeTrustChanged]:
    found = [e for e in grid.events() if isinstance(e, NodeTrustChanged)]
    return [e for e in found if node_id is None or e.node_id == node_id]


async def test_an_honest_quorum_of_two_owners_accepts_the_result_and_counts_both_nodes() -> None:
    grid = Grid(rules())
    t = task()
    await grid.scheduler.on_submitted(t)
    first, second = await grid.take("n1"), await grid.take("n2")
    assert (first.attempt, second.attempt) == (1, 2)
    assert (await grid.poll("n3")).reason == "no_work"  # two replicas at once, no more
    await grid.report(first, result=HONEST)
    state = grid.store.saved[t.id]
    assert state.status == "verifying"
    [verifying] = grid.events("verifying")
    assert verifying.verification.policy == "quorum" and verifying.verification.agreement == 1
    await grid.report(second, result=HONEST, seconds=20)
    [completed] = grid.events("completed")
    v = completed.verification
    assert v is not None and v.outcome == "accepted" and v.agreement == 2
    assert [(r.node_id, r.verdict) for r in v.replicas] == [("n1", "valid"), ("n2", "valid")]
    assert completed.result == HONEST
    # Both replicas' energy is the task's: 10 W x (36 + 20) s at 200 g/kWh.
    assert completed.co2_grams == pytest.approx(10 * 56 / 3600 / 1000 * 200)
    assert {s.node_id: (s.validated, s.valid_streak) for s in grid.standings.saved.values()} == {
        "n1": (1, 1),
        "n2": (1, 1),
    }
    assert trust_events(grid) == []  # nobody's standing changed yet (trust after 5)
    assert grid.scheduler.outcomes == {"accepted": 1}


async def test_a_lazy_node_disagreeing_gets_a_third_replica_asked_and_is_caught_wrong() -> None:
    grid = Grid(rules())
    t = task()
    await grid.scheduler.on_submitted(t)
    honest, lazy = await grid.take("honest-1"), await grid.take("lazy")
    await grid.report(lazy, result=GARBAGE, seconds=1)
    await grid.report(honest, result=HONEST)
    assert grid.store.saved[t.id].status == "verifying"
    third = await grid.take("honest-2")
    assert third.attempt == 3
    await grid.report(third, result=HONEST)
    [completed] = grid.events("completed")
    assert completed.result == HONEST and completed.node_id == "honest-2"
    verdicts = {r.node_id: r.verdict for r in completed.verification.replicas}
    assert verdicts == {"honest-1": "valid", "lazy": "invalid", "honest-2": "valid"}
    [caught] = trust_events(grid, "lazy")
    assert caught.reason == "caught_wrong" and caught.trusted is False and caught.invalid == 1
    assert caught.id == str(uuid.uuid5(uuid.UUID(t.id), "task:trust:lazy:caught_wrong"))
    assert grid.standings.saved["lazy"].invalid == 1
    assert grid.scheduler.trust_changes == {"caught_wrong": 1}
    assert [a.outcome for a in grid.store.saved[t.id].attempts] == ["completed", "invalid", "completed"]


async def test_two_colluding_nodes_of_one_owner_never_make_a_quorum() -> None:
    roster = {
        "acme-1": NodeGrant(frozenset(), owner="acme"),
        "acme-2": NodeGrant(frozenset(), owner="acme"),
    }
    grid = Grid(rules(), roster=roster)
    t = task()
    await grid.scheduler.on_submitted(t)
    first = await grid.take("acme-1")
    assert (await grid.poll("acme-2")).reason == "no_work"  # the same owner has a replica
    honest = await grid.take("n1")
    await grid.report(first, result=GARBAGE)
    await grid.report(honest, result=HONEST)
    # Disagreement: a third owner is asked, never acme's second node.
    assert (await grid.poll("acme-2")).reason == "no_work"
    await grid.report(await grid.take("n2"), result=HONEST)
    [completed] = grid.events("completed")
    assert completed.result == HONEST
    assert {r.owner for r in completed.verification.replicas} == {"acme", "n1", "n2"}


async def test_with_a_quorum_of_three_two_colluders_with_one_wrong_answer_never_beat_three_honest_owners() -> (
    None
):
    """(With a quorum of 2, two colluding owners answering first would win: the quorum is the defence.)"""
    grid = Grid(rules(quorum=3, max_replicas=5))
    t = task()
    await grid.scheduler.on_submitted(t)
    c1, c2, h1 = await grid.take("c1"), await grid.take("c2"), await grid.take("h1")
    await grid.report(c1, result=GARBAGE)
    await grid.report(c2, result=GARBAGE)
    await grid.report(h1, result=HONEST)
    await grid.report(await grid.take("h2"), result=HONEST)
    await grid.report(await grid.take("h3"), result=HONEST)
    [completed] = grid.events("completed")
    assert completed.result == HONEST
    verdicts = {r.node_id: r.verdict for r in completed.verification.replicas}
    assert verdicts == {"c1": "invalid", "c2": "invalid", "h1": "valid", "h2": "valid", "h3": "valid"}


async def test_a_trusted_node_s_result_is_taken_alone_unchecked_and_earns_its_trust_first() -> None:
    grid = Grid(rules(trust_after=2, spot_check_rate=0.0))
    for _ in range(2):
        t = task()
        await grid.scheduler.on_submitted(t)
        mine, other = await grid.take("veteran"), await grid.take(f"peer-{t.id[:4]}")
        await grid.report(mine, result=HONEST)
        await grid.report(other, result=HONEST)
    [earned] = trust_events(grid, "veteran")
    assert earned.reason == "earned" and earned.trusted and earned.valid_streak == 2
    assert grid.standings.saved["veteran"].trusted
    t = task()
    await grid.scheduler.on_submitted(t)
    alone = await grid.take("veteran")
    assert (await grid.poll("n9")).reason == "no_work"  # nobody else is asked
    await grid.report(alone, result=HONEST)
    completed = grid.events("completed")[-1]
    v = completed.verification
    assert v is not None and v.policy == "trusted" and v.outcome == "accepted_unchecked"
    assert [(r.verdict, r.trusted) for r in v.replicas] == [("unchecked", True)]
    assert grid.standings.saved["veteran"].validated == 2  # an unchecked result proves nothing


async def test_a_trusted_node_drawn_for_a_spot_check_needs_a_quorum() -> None:
    grid = Grid(rules(spot_check_rate=1.0))
    grid.standings.saved["veteran"] = NodeStanding(node_id="veteran", owner="veteran", trusted=True)
    await grid.scheduler.start()
    t = task()
    await grid.scheduler.on_submitted(t)
    first, second = await grid.take("veteran"), await grid.take("n2")
    await grid.report(first, result=HONEST)
    assert grid.store.saved[t.id].status == "verifying"
    await grid.report(second, result=HONEST)
    v = grid.events("completed")[0].verification
    assert v is not None and v.policy == "spot_check" and v.outcome == "accepted"
    assert [(r.node_id, r.verdict, r.trusted) for r in v.replicas] == [
        ("veteran", "valid", True),
        ("n2", "valid", False),
    ]


def test_the_spot_check_draw_is_keyed_by_the_salt_and_close_to_its_rate() -> None:
    ids = [str(uuid.uuid4()) for _ in range(4000)]
    drawn = [i for i in ids if spot_check_drawn(i, b"salt-a", 0.1)]
    assert 0.08 < len(drawn) / len(ids) < 0.12
    assert drawn == [i for i in ids if spot_check_drawn(i, b"salt-a", 0.1)]  # the same after a restart
    assert drawn != [i for i in ids if spot_check_drawn(i, b"salt-b", 0.1)]  # unpredictable without it
    assert not any(spot_check_drawn(i, b"salt-a", 0.0) for i in ids[:100])
    assert all(spot_check_drawn(i, b"salt-a", 1.0) for i in ids[:100])


async def test_the_salt_is_kept_in_the_store_so_a_restart_draws_the_same() -> None:
    grid = Grid(rules())
    await grid.scheduler.start()
    salt = grid.scheduler.board.salt
    assert len(salt) == 32
    restarted = await grid.restart()
    assert restarted.board.salt == salt


async def test_results_that_never_agree_within_max_replicas_fail_unverifiable() -> None:
    grid = Grid(rules(max_replicas=4))
    t = task()
    await grid.scheduler.on_submitted(t)
    a, b = await grid.take("a"), await grid.take("b")
    await grid.report(a, result=invoice("1.00"))
    await grid.report(b, result=invoice("2.00"))
    await grid.report(await grid.take("c"), result=invoice("3.00"))
    assert grid.store.saved[t.id].status == "verifying"
    await grid.report(await grid.take("d"), result=invoice("4.00"))
    [failed] = grid.events("failed")
    assert failed.error == "unverifiable"
    v = failed.verification
    assert v is not None and v.outcome == "unverifiable" and len(v.replicas) == 4 and v.agreement == 1
    assert failed.co2_grams == pytest.approx(4 * 10 * 36 / 3600 / 1000 * 200)
    assert (await grid.poll("e")).reason == "no_work"
    assert trust_events(grid) == []  # nobody knows who was right: nobody is counted


async def test_a_report_signed_by_another_key_is_refused_counted_and_its_replica_given_to_another_node() -> (
    None
):
    grid = Grid(rules(quorum=1))
    t = task()
    await grid.scheduler.on_submitted(t)
    given = await grid.take("n1")
    await grid.report(given, result=HONEST, signer=new_signer())
    state = grid.store.saved[t.id]
    assert state.status == "pending"
    [replica] = state.replicas
    assert (replica.verdict, replica.outcome) == ("refused", "refused")
    [requeued] = grid.events("requeued")
    assert requeued.reason == "refused" and "signed_by_another_key" in requeued.message
    [bad] = trust_events(grid, "n1")
    assert bad.reason == "bad_signature" and bad.trusted is False
    assert grid.standings.saved["n1"].refused == 1
    assert grid.scheduler.refusals == {"signed_by_another_key": 1}
    assert (await grid.poll("n1")).reason == "no_work"  # the refused node is not asked again
    await grid.report(await grid.take("n2"), result=HONEST)
    assert grid.events("completed")[0].node_id == "n2"


async def test_unsigned_and_altered_reports_are_refused() -> None:
    grid = Grid(rules(quorum=1, max_attempts=5))
    t = task()
    await grid.scheduler.on_submitted(t)
    given = await grid.take("n1")
    report, subject = grid.signed(given, result=HONEST)
    await grid.scheduler.on_reported(report.model_copy(update={"signature": None}), subject)
    given = await grid.take("n2")
    report, subject = grid.signed(given, result=HONEST)
    altered = report.model_copy(update={"result": GARBAGE})  # in transit, after the node signed
    await grid.scheduler.on_reported(altered, subject)
    assert grid.scheduler.refusals == {"unsigned_report": 1, "result_altered": 1}
    assert [r.verdict for r in grid.store.saved[t.id].replicas] == ["refused", "refused"]


async def test_a_node_replaying_its_signed_report_of_another_task_is_refused() -> None:
    grid = Grid(rules(quorum=1))
    first, second = task(), task()
    await grid.scheduler.on_submitted(first)
    await grid.scheduler.on_submitted(second)
    a = await grid.take("n1")
    await grid.report(a, result=HONEST)
    b = await grid.take("n1")
    assert b.task_id == second.id
    # The node re-signs its first answer for the second task, naming the assignment it ran.
    old, subject = grid.signed(a, result=HONEST)
    replay = sign_report(
        grid.node_signer("n1"), old.model_copy(update={"task_id": b.task_id, "attempt": b.attempt}), a
    )
    await grid.scheduler.on_reported(replay, subject)
    assert grid.scheduler.refusals == {"not_the_assignment_given": 1}
    assert grid.store.saved[second.id].replicas[0].verdict == "refused"
    # The same signed report sent again for its own task is not a current replica: ignored.
    await grid.scheduler.on_reported(old, subject)
    assert grid.scheduler.refused_reports == 1


async def test_a_restart_mid_verification_keeps_the_replicas_their_digests_and_the_salt() -> None:
    grid = Grid(rules())
    await grid.scheduler.start()
    t = task()
    await grid.scheduler.on_submitted(t)
    first, second = await grid.take("n1"), await grid.take("n2")
    await grid.report(first, result=HONEST)
    assert grid.store.saved[t.id].status == "verifying"
    salt = grid.scheduler.board.salt
    await grid.restart()
    assert grid.scheduler.board.salt == salt
    state = grid.scheduler.board.get(t.id)
    assert state is not None and state.status == "verifying"
    assert all(r.assignment_digest for r in state.replicas)
    assert (await grid.poll("n3")).reason == "no_work"  # still waiting on n2, not asking a third
    await grid.report(second, result=HONEST)
    [completed] = grid.events("completed")
    assert completed.verification.outcome == "accepted"
    assert grid.standings.saved["n1"].validated == 1  # counted once, after the restart


async def test_an_implausible_attestation_counts_for_agreement_but_earns_nothing_and_resets_the_run() -> None:
    grid = Grid(rules())
    grid.standings.saved["n1"] = NodeStanding(node_id="n1", owner="n1", valid_streak=3, validated=3)
    await grid.scheduler.start()
    t = task()
    await grid.scheduler.on_submitted(t)
    first, second = await grid.take("n1"), await grid.take("n2")
    # 0.001 Wh for 36 s: below what a Pi 5 idling at 2.7 W needs (0.027 Wh).
    await grid.report(first, result=HONEST, attested=attestation(36, wh=0.001, power_watts=0.1))
    [flagged] = trust_events(grid, "n1")
    assert flagged.reason == "implausible_attestation" and flagged.valid_streak == 0
    await grid.report(second, result=HONEST)
    v = grid.events("completed")[0].verification
    assert v is not None and v.outcome == "accepted" and v.agreement == 2
    assert [(r.node_id, r.verdict) for r in v.replicas] == [("n1", "flagged"), ("n2", "valid")]
    assert "energy_below_idle" in v.replicas[0].flags and v.replicas[1].flags == []
    assert grid.standings.saved["n1"].flagged == 1 and grid.standings.saved["n1"].validated == 3


async def test_a_node_lost_mid_verification_is_replaced_by_another_owner() -> None:
    grid = Grid(rules())
    t = task()
    await grid.scheduler.on_submitted(t)
    first, _doomed = await grid.take("n1"), await grid.take("doomed")
    await grid.report(first, result=HONEST)
    await grid.scheduler.tick(alive={"n1", "n3"})
    state = grid.store.saved[t.id]
    assert state.status == "verifying"
    assert [(r.node_id, r.outcome) for r in state.replicas] == [("n1", "completed"), ("doomed", "node_lost")]
    await grid.report(await grid.take("n3"), result=HONEST)
    assert grid.events("completed")[0].verification.agreement == 2


async def test_cancel_tells_every_node_running_a_replica() -> None:
    grid = Grid(rules())
    t = task()
    await grid.scheduler.on_submitted(t)
    await grid.take("n1")
    await grid.take("n2")
    await grid.scheduler.on_cancel_requested(TaskCancelRequested(source="gw", copro_id="c1", task_id=t.id))
    assert sorted(grid.replies.cancels) == [("n1", t.id), ("n2", t.id)]
    assert grid.store.saved[t.id].status == "cancelled"


async def test_a_replica_still_running_when_the_decision_is_made_is_stopped_not_needed() -> None:
    grid = Grid(rules(quorum=3, max_replicas=4))
    t = task()
    await grid.scheduler.on_submitted(t)
    a, b, c = await grid.take("a"), await grid.take("b"), await grid.take("c")
    await grid.report(a, result=invoice("1.00"))
    await grid.report(b, result=invoice("2.00"))
    d = await grid.take("d")  # one more could still make 3 agree
    assert d.attempt == 4
    await grid.report(c, result=invoice("3.00"))  # now no 3 can agree within 4
    [failed] = grid.events("failed")
    assert failed.error == "unverifiable"
    assert grid.replies.cancels == [("d", t.id)]
    last = grid.store.saved[t.id].replicas[-1]
    assert (last.node_id, last.verdict, last.outcome) == ("d", "not_needed", "not_needed")


async def test_a_heartbeat_key_is_pinned_once_and_a_roster_key_wins() -> None:
    grid = Grid(rules())
    first, other = new_signer(), new_signer()
    assert grid.scheduler.heard_key("n1", first.public_key) is None
    assert grid.scheduler.heard_key("n1", first.public_key) is None
    assert grid.scheduler.heard_key("n1", other.public_key) == "key_not_pinned"
    assert grid.scheduler.node_key("n1") == first.public_key
    grid.roster = {"r1": NodeGrant(frozenset(), public_key=first.public_key, owner="coop")}
    assert grid.scheduler.heard_key("r1", other.public_key) == "key_not_in_roster"
    assert grid.scheduler.heard_key("r1", first.public_key) is None
    assert grid.scheduler.node_key("r1") == first.public_key
    assert grid.scheduler.owner_of("r1") == "coop" and grid.scheduler.owner_of("n1") == "n1"
    await grid.scheduler.tick(alive=set())
    assert grid.standings.saved["n1"].public_key == first.public_key  # stored: survives a restart


def test_the_trust_book_earns_loses_and_counts_each_judgment_once() -> None:
    book = TrustBook(trust_after=2)

    def judge(verdict: Any, task_id: str, attempt: int = 1) -> NodeStanding | None:
        standing = book.judge(Judgment("n1", "o1", verdict, task_id, attempt), T0)
        if standing is not None:
            book.put(standing)
        return standing

    t1, t2, t3, t4 = (str(uuid.uuid4()) for _ in range(4))
    assert judge("valid", t1) is not None and not book.is_trusted("n1")
    assert judge("valid", t1) is None  # a redelivered report counts once
    earned = judge("valid", t2)
    assert earned is not None and earned.trusted and len(earned.outbox) == 1
    assert judge("unchecked", t3) is None
    flagged = judge("flagged", t3, 2)
    assert flagged is not None and flagged.trusted and flagged.valid_streak == 0
    caught = judge("invalid", t4)
    assert caught is not None and not caught.trusted and caught.invalid == 1 and caught.caught_at == T0
    event = NodeTrustChanged.model_validate_json(caught.outbox[0][1])
    assert caught.outbox[0][0] == subjects.grid_node_trust("n1")
    assert (event.reason, event.trusted, event.validated, event.invalid) == ("caught_wrong", False, 2, 1)


def test_tallies_count_distinct_owners_and_say_when_a_quorum_is_out_of_reach() -> None:
    votes = [Vote(1, "acme", "k1"), Vote(2, "acme", "k1"), Vote(3, "b", "k2")]
    assert tally(votes).owners == 1 and tally(votes).results == 3
    assert replicas_wanted(2, 4, best_owners=0, results=0, running=0) == 2
    assert replicas_wanted(2, 4, best_owners=1, results=2, running=0) == 1
    assert replicas_wanted(2, 4, best_owners=1, results=1, running=1) == 0
    assert replicas_wanted(3, 4, best_owners=1, results=3, running=0) == 1
    assert reachable(3, 4, best_owners=1, results=3) is False


def test_a_state_stored_before_replicas_reads_as_replicas() -> None:
    t = task()
    old = {
        "task": t.model_dump(mode="json"),
        "status": "running",
        "attempt": 2,
        "node_id": "n2",
        "footprint": {"power_watts": 7.0, "intensity_g_per_kwh": 150.0, "renewable_attested": False},
        "start_by": (T0 + timedelta(seconds=20)).isoformat(),
        "run_deadline": (T0 + timedelta(seconds=300)).isoformat(),
        "attempts": [
            {"attempt": 1, "node_id": "n1", "outcome": "node_lost"},
            {"attempt": 2, "node_id": "n2", "started_at": T0.isoformat()},
        ],
        "final_at": None,
        "outbox": [],
    }
    state = TaskState.model_validate(old)
    assert [(r.node_id, r.phase, r.outcome) for r in state.replicas] == [
        ("n1", "ended", "node_lost"),
        ("n2", "running", None),
    ]
    assert state.node_id == "n2" and state.policy is None


async def test_a_node_already_waiting_gets_the_second_replica_as_soon_as_the_first_is_handed_out() -> None:
    grid = Grid(rules())
    waiting = await grid.poll("n2", inbox="n2-waits", wait_s=5)
    assert waiting.reason == "waiting"
    t = task()
    await grid.scheduler.on_submitted(t)  # n2 takes the first replica at once
    first = grid.replies.to("n2-waits")[0].assignment
    assert first is not None and first.task_id == t.id
    await grid.poll("n3", inbox="n3-waits", wait_s=5)
    [second] = grid.replies.to("n3-waits")
    assert second.assignment is not None and second.assignment.attempt == 2
    # Now a poll that takes a replica offers the next one to a node waiting meanwhile.
    t2 = task()
    await grid.poll("n4", inbox="n4-waits", wait_s=5)  # takes t2's first replica when it comes
    await grid.poll("n5", inbox="n5-waits", wait_s=5)
    await grid.scheduler.on_submitted(t2)
    assert [
        r.assignment.task_id
        for r in grid.replies.to("n4-waits") + grid.replies.to("n5-waits")
        if r.assignment
    ] == [
        t2.id,
        t2.id,
    ]


async def _trusted_veteran(grid: Grid) -> None:
    grid.standings.saved["veteran"] = NodeStanding(
        node_id="veteran", owner="veteran", trusted=True, valid_streak=5, validated=5
    )
    await grid.scheduler.start()


async def test_a_trusted_node_caught_wrong_has_its_unchecked_results_of_the_window_re_checked() -> None:
    documents = FakeTaskDocumentBin()
    grid = Grid(rules(spot_check_rate=0.0, recheck_window_s=3600), documents=documents)
    await _trusted_veteran(grid)
    old = task()
    await grid.scheduler.on_submitted(old)
    await grid.report(await grid.take("veteran"), result=HONEST)  # delivered long before
    grid.clock.advance(3700)
    right, wrong = task(at=grid.clock.now), task(at=grid.clock.now)
    for t in (right, wrong):
        await grid.scheduler.on_submitted(t)
    await grid.report(await grid.take("veteran"), result=HONEST)
    await grid.report(await grid.take("veteran"), result=GARBAGE)  # unchecked too
    assert [e.verification.outcome for e in grid.events("completed")] == ["accepted_unchecked"] * 3
    # Taken alone, their inputs are kept for the re-check window (not `old`'s: its window is over).
    await grid.scheduler.tick(alive={"veteran"})
    assert grid.store.saved[right.id].task.parameters == {"n": 1}
    assert grid.store.saved[old.id].task.parameters == {}
    # Now a spot check catches it wrong.
    grid.scheduler.board.rules = dataclasses.replace(grid.rules, spot_check_rate=1.0)
    caught = task(at=grid.clock.now)
    await grid.scheduler.on_submitted(caught)
    checked, peer = await grid.take("veteran"), await grid.take("n2")
    await grid.report(checked, result=GARBAGE)
    await grid.report(peer, result=HONEST)
    await grid.report(await grid.take("n3"), result=HONEST)
    [lost] = [e for e in trust_events(grid, "veteran") if e.task_id == caught.id]
    assert lost.reason == "caught_wrong" and lost.trusted is False
    # Its two results of the window are replicated again; `old` is not.
    rechecks = [e for e in grid.events("verifying") if e.id == task_event_id(e.task_id, "recheck:verifying")]
    assert sorted(e.task_id for e in rechecks) == sorted([right.id, wrong.id])
    assert grid.scheduler.rechecks == 2
    assert grid.store.saved[right.id].status == "verifying"
    again = await grid.take("n4")
    assert again.parameters == {"n": 1} and again.task_id in (right.id, wrong.id)
    await grid.report(again, result=HONEST)
    again = await grid.take("n4")
    await grid.report(again, result=HONEST)
    # `right` agrees with its re-check; `wrong` is decided again against the veteran.
    for t, verdict in ((right, "valid"), (wrong, "invalid")):
        state = grid.store.saved[t.id]
        assert state.status == ("completed" if verdict == "valid" else "verifying"), state.status
    await grid.report(await grid.take("n5"), result=HONEST)
    decided = {
        e.task_id: e for e in grid.events("completed") if e.id != task_event_id(e.task_id, "completed")
    }
    assert set(decided) == {right.id, wrong.id}
    assert decided[right.id].id == task_event_id(right.id, "recheck:completed")
    rechecked = {r.node_id: r for r in decided[right.id].verification.replicas}["veteran"]
    assert (rechecked.verdict, rechecked.trusted) == ("valid", False)  # judged now, untrusted
    assert {r.node_id: r.verdict for r in decided[wrong.id].verification.replicas}["veteran"] == "invalid"
    assert decided[wrong.id].result == HONEST  # the corrected result
    assert [e.reason for e in trust_events(grid, "veteran") if e.task_id == wrong.id] == ["caught_wrong"]
    assert grid.store.saved[wrong.id].task.parameters == {}  # decided again: contents forgotten
    # Right before it was caught is no new valid result: its run starts again from new work.
    veteran = grid.standings.saved["veteran"]
    assert (veteran.trusted, veteran.valid_streak, veteran.validated, veteran.invalid) == (False, 0, 5, 2)


async def test_a_re_check_nobody_takes_before_its_window_ends_leaves_the_task_as_decided() -> None:
    grid = Grid(rules(spot_check_rate=0.0, recheck_window_s=600))
    await _trusted_veteran(grid)
    t = task()
    await grid.scheduler.on_submitted(t)
    await grid.report(await grid.take("veteran"), result=HONEST)
    grid.scheduler.board.rules = dataclasses.replace(grid.rules, spot_check_rate=1.0)
    caught = task()
    await grid.scheduler.on_submitted(caught)
    checked, peer = await grid.take("veteran"), await grid.take("n2")
    await grid.report(checked, result=GARBAGE)
    await grid.report(peer, result=HONEST)
    await grid.report(await grid.take("n3"), result=HONEST)
    assert grid.store.saved[t.id].status == "verifying" and grid.store.saved[t.id].rechecked
    running = await grid.take("n9")
    assert running.task_id == t.id
    published = len(grid.bus.published)
    grid.clock.advance(601)
    await grid.scheduler.tick(alive={"n9", "n2", "veteran"})
    state = grid.store.saved[t.id]
    assert state.status == "completed" and state.outcome == "accepted_unchecked"
    assert [(r.verdict, r.trusted) for r in state.replicas] == [("unchecked", True), ("not_needed", False)]
    assert grid.replies.cancels == [("n9", t.id)]
    assert state.task.parameters == {}  # its window is over: forgotten
    assert grid.bus.published[published:] == []  # the task stays as it was decided


async def test_trust_events_are_stored_before_published_and_not_published_again_after_a_restart() -> None:
    grid = Grid(rules())
    t = task()
    await grid.scheduler.on_submitted(t)
    honest, lazy = await grid.take("honest-1"), await grid.take("lazy")
    await grid.report(lazy, result=GARBAGE)
    await grid.report(honest, result=HONEST)
    grid.bus.fail_next = True  # the decision's events cannot be published now
    await grid.report(await grid.take("honest-2"), result=HONEST)
    stored = grid.standings.saved["lazy"]
    assert stored.invalid == 1 and len(stored.outbox) == 1  # stored with its event, not published
    assert trust_events(grid) == [] and grid.events("completed") == []
    grid.bus.fail_next = False
    await grid.scheduler.tick(alive={"honest-1", "honest-2"})
    [caught] = trust_events(grid, "lazy")
    assert len(grid.events("completed")) == 1
    assert grid.standings.saved["lazy"].outbox == []  # published: nothing left to publish again
    await grid.restart()
    assert trust_events(grid) == [caught]


def test_the_ops_port_counters_follow_the_scheduler_s_counts() -> None:
    from prometheus_client import Counter as PromCounter

    from koprogo_grid.bootstrap import _sync

    counter = PromCounter("test_grid_outcomes", "test", ["outcome"], registry=None)
    seen: dict[str, int] = {}
    _sync(counter, seen, {"accepted": 2})
    _sync(counter, seen, {"accepted": 3, "unverifiable": 1})
    _sync(counter, seen, {"accepted": 3, "unverifiable": 1})
    assert counter.labels("accepted")._value.get() == 3
    assert counter.labels("unverifiable")._value.get() == 1


async def test_concurrent_decisions_about_one_node_each_count() -> None:
    grid = Grid(rules())
    saved = grid.standings.save

    async def slow_save(standing: NodeStanding) -> None:
        await asyncio.sleep(0.01)  # a KV round trip: another task's decision runs meanwhile
        await saved(standing)

    grid.standings.save = slow_save  # type: ignore[method-assign]
    tasks = [task(), task()]
    given = []
    for t in tasks:
        await grid.scheduler.on_submitted(t)
        given.append((await grid.take("n1"), await grid.take("n2")))
    for mine, _ in given:
        await grid.report(mine, result=HONEST)
    await asyncio.gather(*(grid.report(theirs, result=HONEST) for _, theirs in given))
    assert len(grid.events("completed")) == 2
    assert grid.standings.saved["n1"].validated == 2 and grid.standings.saved["n2"].validated == 2
    assert grid.scheduler.trust.get("n1").validated == 2  # type: ignore[union-attr]


# ----- fewer owners than the quorum (verification.short_of_owners) ----------------------------


class Live:
    """The nodes alive, as the scheduler's `live_nodes` gives them (a heartbeat-fed registry)."""

    def __init__(self, grid: Grid, *node_ids: str) -> None:
        self.nodes = set(node_ids)
        grid.scheduler.live_nodes = self

    def __call__(self) -> list[tuple[str, frozenset[str], frozenset[str]]]:
        return [
            (n, frozenset({"ocr_invoice"}), frozenset({subjects.SHARED_POOL})) for n in sorted(self.nodes)
        ]


def test_the_rule_short_of_owners() -> None:
    base = {"wanted": 1, "running": 0, "results": 1, "distinct": 1, "new_owners": 0, "waited_enough": True}
    assert short_of_owners(**base) == "accept_unchecked"
    assert short_of_owners(**(base | {"results": 2, "distinct": 2})) == "await_owner"
    for change in (
        {"new_owners": 1},  # someone can still join the quorum
        {"running": 1},  # a replica is still running: its result may make the quorum
        {"results": 0, "distinct": 0},  # nothing to accept yet
        {"waited_enough": False},  # a second owner's node may not have announced itself yet
        {"wanted": 0},
    ):
        assert short_of_owners(**(base | change)) == "proceed", change
    assert groups([Vote(1, "a", "k"), Vote(2, "b", "k"), Vote(3, "c", "x")]) == 2


async def test_with_one_owner_alive_its_result_is_accepted_unchecked_after_the_grace_and_earns_no_trust() -> (
    None
):
    grid = Grid(rules(trust_after=2, owner_wait_s=10))
    live = Live(grid, "local")
    tasks = [task() for _ in range(3)]
    for t in tasks:
        await grid.scheduler.on_submitted(t)
    first = await grid.take("local")
    await grid.report(first, result=HONEST)
    # Within the grace a second owner may still come: the quorum is waited for.
    assert grid.store.saved[tasks[0].id].status == "verifying"
    assert grid.events("completed") == []
    grid.clock.advance(11)
    await grid.scheduler.tick(alive=live.nodes)
    [completed] = grid.events("completed")
    v = completed.verification
    assert completed.task_id == tasks[0].id and completed.result == HONEST and completed.node_id == "local"
    assert v is not None and v.outcome == "accepted_unchecked" and v.policy == "quorum"
    assert v.quorum == 1 and v.agreement == 1 and v.note is not None and "owners_short" in v.note
    assert [(r.node_id, r.verdict, r.trusted) for r in v.replicas] == [("local", "unchecked", False)]
    assert grid.store.saved[tasks[0].id].status == "completed"
    # Past the grace, the next results are taken as soon as they come; a lone node (honest or
    # not: nobody can tell) never earns trust from them.
    for t in tasks[1:]:
        await grid.report(await grid.take("local"), result=GARBAGE)
        assert grid.store.saved[t.id].status == "completed"
    outcomes = [e.verification.outcome for e in grid.events("completed")]
    assert outcomes == ["accepted_unchecked"] * 3
    assert grid.scheduler.outcomes == {"accepted_unchecked": 3}
    assert grid.scheduler.owners_short == {"accepted_unchecked": 3}
    assert trust_events(grid) == []
    standing = grid.standings.saved.get("local")
    assert standing is None or (standing.validated, standing.trusted) == (0, False)
    assert not grid.scheduler.trust.is_trusted("local")
    # An untrusted node's unchecked result is not kept for a re-check (none can come).
    assert grid.store.saved[tasks[0].id].recheck_until is None


async def test_without_known_live_nodes_the_quorum_is_always_waited_for() -> None:
    grid = Grid(rules())
    t = task()
    await grid.scheduler.on_submitted(t)
    await grid.report(await grid.take("local"), result=HONEST)
    grid.clock.advance(60)
    await grid.scheduler.tick(alive={"local"})
    assert grid.store.saved[t.id].status == "verifying" and grid.events("completed") == []


async def test_when_the_second_owner_dies_while_the_first_result_waits_it_is_accepted_unchecked() -> None:
    grid = Grid(rules())
    live = Live(grid, "n1", "n2")
    t = task()
    await grid.scheduler.on_submitted(t)
    first, second = await grid.take("n1"), await grid.take("n2")
    grid.clock.advance(15)  # past the grace
    await grid.report(first, result=HONEST)
    assert grid.store.saved[t.id].status == "verifying"  # n2's replica is still running
    live.nodes.discard("n2")  # killed: its heartbeats stop
    grid.clock.advance(5)
    await grid.scheduler.tick(alive=live.nodes)
    [completed] = grid.events("completed")
    v = completed.verification
    assert v is not None and v.outcome == "accepted_unchecked" and v.quorum == 1
    verdicts = {(r.node_id, r.attempt): r.verdict for r in v.replicas}
    assert verdicts == {("n1", first.attempt): "unchecked", ("n2", second.attempt): "lost"}
    assert [e.reason for e in grid.events("requeued")] == ["node_lost"]
    assert trust_events(grid) == [] and grid.standings.saved["n1"].validated == 0  # its pinned key only


async def test_disagreeing_results_with_no_new_owner_wait_then_fail_unverifiable_at_expiry() -> None:
    grid = Grid(rules())
    live = Live(grid, "n1", "n2")
    t = task(ttl_s=120)
    await grid.scheduler.on_submitted(t)
    first, second = await grid.take("n1"), await grid.take("n2")
    grid.clock.advance(15)
    await grid.report(first, result=HONEST)
    await grid.report(second, result=GARBAGE)
    state = grid.store.saved[t.id]
    assert state.status == "verifying" and state.note is not None and "disagree" in state.note
    assert [r.result for r in state.replicas] == [HONEST, GARBAGE]  # kept until the decision
    waiting = grid.events("verifying")[-1].verification
    assert waiting.note == state.note and waiting.outcome == "pending"
    await grid.scheduler.tick(alive=live.nodes)  # nothing new: no second "waiting" event
    assert len(grid.events("verifying")) == 2
    grid.clock.advance(120)
    await grid.scheduler.tick(alive=live.nodes)
    assert grid.events("expired") == []
    [failed] = grid.events("failed")
    assert failed.error == "unverifiable" and "disagree" in failed.message
    v = failed.verification
    assert v is not None and v.outcome == "unverifiable"
    assert [(r.node_id, r.verdict) for r in v.replicas] == [("n1", "pending"), ("n2", "pending")]
    assert failed.last_attempt_outcome == "not_needed"
    assert grid.store.saved[t.id].status == "failed"
    assert [r.result for r in grid.store.saved[t.id].replicas] == [None, None]  # forgotten with the task
    assert trust_events(grid) == []  # nobody was judged right or wrong
    assert grid.scheduler.owners_short == {"awaiting_owner": 1, "unverifiable": 1}


async def test_disagreeing_results_are_settled_by_a_new_owner_arriving_before_expiry() -> None:
    grid = Grid(rules())
    live = Live(grid, "n1", "n2")
    t = task(ttl_s=600)
    await grid.scheduler.on_submitted(t)
    first, second = await grid.take("n1"), await grid.take("n2")
    grid.clock.advance(15)
    await grid.report(first, result=HONEST)
    await grid.report(second, result=GARBAGE)
    await grid.scheduler.tick(alive=live.nodes)
    assert grid.store.saved[t.id].note is not None  # waiting for an owner
    live.nodes.add("n3")
    third = await grid.take("n3")
    assert grid.store.saved[t.id].note is None  # one came
    await grid.report(third, result=HONEST)
    assert grid.scheduler.owners_short == {"awaiting_owner": 1}
    [completed] = grid.events("completed")
    v = completed.verification
    assert v is not None and v.outcome == "accepted" and v.note is None and v.quorum == 2
    assert {r.node_id: r.verdict for r in v.replicas} == {"n1": "valid", "n2": "invalid", "n3": "valid"}


async def test_a_second_owner_arriving_within_the_grace_makes_a_real_quorum() -> None:
    grid = Grid(rules(owner_wait_s=10))
    live = Live(grid, "n1")
    t = task()
    await grid.scheduler.on_submitted(t)
    first = await grid.take("n1")
    grid.clock.advance(2)
    await grid.report(first, result=HONEST)
    assert grid.store.saved[t.id].status == "verifying"
    grid.clock.advance(3)
    live.nodes.add("n2")  # its first heartbeat, 5 s after the task was queued
    second = await grid.take("n2")
    grid.clock.advance(7)  # past the grace, but n2's replica is running: its result is waited for
    await grid.scheduler.tick(alive=live.nodes)
    assert grid.events("completed") == []
    await grid.report(second, result=HONEST)
    [completed] = grid.events("completed")
    v = completed.verification
    assert v is not None and v.outcome == "accepted" and v.quorum == 2 and v.note is None
    assert [(r.node_id, r.verdict) for r in v.replicas] == [("n1", "valid"), ("n2", "valid")]
    assert {s.node_id: s.validated for s in grid.standings.saved.values()} == {"n1": 1, "n2": 1}


async def test_two_nodes_of_one_owner_are_one_owner_short_of_a_quorum() -> None:
    roster = {
        "acme-1": NodeGrant(frozenset(), owner="acme"),
        "acme-2": NodeGrant(frozenset(), owner="acme"),
    }
    grid = Grid(rules(owner_wait_s=0), roster=roster)
    Live(grid, "acme-1", "acme-2")
    t = task()
    await grid.scheduler.on_submitted(t)
    await grid.report(await grid.take("acme-1"), result=HONEST)
    [completed] = grid.events("completed")
    v = completed.verification
    assert v is not None and v.outcome == "accepted_unchecked"
    assert [(r.owner, r.verdict) for r in v.replicas] == [("acme", "unchecked")]


async def test_a_restarted_scheduler_waits_for_nodes_to_announce_themselves_before_judging_owners_short() -> (
    None
):
    grid = Grid(rules(owner_wait_s=10))
    live = Live(grid, "n1", "n2")
    t = task()
    await grid.scheduler.on_submitted(t)
    first = await grid.take("n1")
    grid.clock.advance(15)
    await grid.report(first, result=HONEST)  # n2 is alive (not polling yet): the quorum is waited for
    assert grid.store.saved[t.id].status == "verifying"
    await grid.restart()
    live = Live(grid)  # no node heard by the new scheduler yet
    grid.clock.advance(1)
    await grid.scheduler.tick(alive=live.nodes)
    assert grid.events("completed") == []  # who is alive is not known yet: nothing taken alone
    live.nodes.update({"n1", "n2"})
    grid.clock.advance(10)
    await grid.scheduler.tick(alive=live.nodes)
    assert grid.events("completed") == []
    await grid.report(await grid.take("n2"), result=HONEST)
    [completed] = grid.events("completed")
    assert completed.verification is not None and completed.verification.outcome == "accepted"


async def test_the_stored_state_keeps_one_result_per_distinct_result_until_the_decision() -> None:
    grid = Grid(rules(quorum=3, max_replicas=4))
    Live(grid, "n1", "n2", "n3")
    t = task()
    await grid.scheduler.on_submitted(t)
    a, b, c = await grid.take("n1"), await grid.take("n2"), await grid.take("n3")
    await grid.report(a, result=HONEST)
    await grid.report(b, result=HONEST)
    assert [r.result for r in grid.store.saved[t.id].replicas] == [None, HONEST, None]
    await grid.report(c, result=HONEST)
    [completed] = grid.events("completed")
    assert completed.result == HONEST and completed.node_id == "n3"
    assert completed.verification is not None and completed.verification.outcome == "accepted"


def test_a_verification_without_a_note_is_serialised_as_before_the_field_existed() -> None:
    """Readers built before `note` (extra="forbid") still read every verification that has none."""
    plain = TaskVerification(policy="quorum", quorum=2, max_replicas=4)
    assert "note" not in plain.model_dump() and '"note"' not in plain.model_dump_json()
    noted = plain.model_copy(update={"note": "owners_short: alone"})
    assert noted.model_dump()["note"] == "owners_short: alone"
    assert TaskVerification.model_validate_json(noted.model_dump_json()) == noted
