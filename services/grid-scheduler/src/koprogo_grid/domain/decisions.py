"""The decision on a node's report and on a task's results: accepted (by a quorum, or unchecked
when no other owner can run it), unverifiable, verifying, or taken back. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from koprogo_grid.domain import assignments
from koprogo_grid.domain.nodes import LiveNode, new_owners
from koprogo_grid.domain.rules import GridRules
from koprogo_grid.domain.task_ending import failed, take_back, unverifiable
from koprogo_grid.domain.task_state import (
    SOURCE,
    Replica,
    ReportCheck,
    Step,
    TaskState,
    replaced,
    replica_grams,
    task_grams,
    wanted,
    with_events,
)
from koprogo_grid.domain.trust import JudgedVerdict, Judgment
from koprogo_grid.domain.verification import groups, reachable, short_of_owners, tally
from koprogo_shared.task_events import TaskCompleted, TaskResultReported, TaskVerifying, task_event_id


def reported(
    rules: GridRules,
    state: TaskState,
    report: TaskResultReported,
    check: ReportCheck,
    now: datetime,
    live: Iterable[LiveNode] | None = None,
) -> Step | None:
    """The decision on a node's report, or None when it is not for an open replica.

    `live`: the nodes alive now (None: not known, a quorum is always waited for)."""
    replica = assignments.current(state, report.node_id, report.attempt)
    if replica is None:
        return None
    if check.refusal is not None:
        refused = replica.ended(now, "refused", "refused").model_copy(update={"trusted": check.trusted})
        judged = Judgment(
            replica.node_id, replica.owner, "refused", state.task_id, replica.attempt, state.task.copro_id
        )
        step = take_back(
            rules,
            state,
            refused,
            "refused",
            f"node {report.node_id}: its report was refused ({check.refusal})",
            now,
        )
        return Step(step.state, step.cancel_nodes, [judged, *step.judgments])
    if report.outcome == "completed" and report.result is not None and check.agreement_key is not None:
        done = replica.model_copy(
            update={
                "phase": "reported",
                "ended_at": now,
                "outcome": "completed",
                "trusted": check.trusted,
                "result_digest": report.result_digest,
                "agreement_key": check.agreement_key,
                "usage": report.usage,
                "attestation": report.attestation,
                "flags": list(check.flags),
                "result": report.result,
            }
        )
        done = done.model_copy(update={"co2_grams": replica_grams(done, report.usage.duration_s)})
        judgments = []
        if check.flags:
            judgments.append(
                Judgment(
                    replica.node_id,
                    replica.owner,
                    "flagged",
                    state.task_id,
                    replica.attempt,
                    state.task.copro_id,
                )
            )
        # One result kept per distinct result (the newest): the stored state stays small.
        replicas = [
            r.model_copy(update={"result": None})
            if r.agreement_key == done.agreement_key and r.result is not None
            else r
            for r in replaced(state, done)
        ]
        replicas = [done if r.attempt == done.attempt else r for r in replicas]
        updated = state.model_copy(update={"replicas": replicas})
        if updated.policy is None:  # a replica handed out before verification existed
            updated = updated.model_copy(
                update={
                    "policy": "quorum",
                    "quorum": rules.quorum,
                    "max_replicas": rules.max_replicas,
                }
            )
        if updated.policy == "trusted" and (check.flags or not check.trusted):
            # Taken alone only from a node still trusted with a believable attestation.
            updated = updated.model_copy(
                update={
                    "policy": "spot_check" if check.trusted else "quorum",
                    "quorum": rules.quorum,
                    "max_replicas": max(rules.max_replicas, rules.quorum),
                }
            )
        step = _decide(rules, updated, done, now, live)
        return Step(step.state, step.cancel_nodes, [*judgments, *step.judgments])
    if report.outcome == "input_error" and not state.rechecked:
        ended = state.model_copy(
            update={"replicas": replaced(state, replica.ended(now, "input_error", "lost"))}
        )
        return failed(
            ended,
            now,
            report.error or "invalid_input",
            report.message or "the task's input cannot be processed",
            "input_error",
        )
    message = report.message or "the node could not run the task"
    if report.outcome == "completed":
        message = "the node reported no result"
    return take_back(
        rules, state, replica.ended(now, "failed", "lost"), "failed", f"node {report.node_id}: {message}", now
    )


def _decide(
    rules: GridRules, state: TaskState, current: Replica, now: datetime, live: Iterable[LiveNode] | None
) -> Step:
    """After a result: accepted (a quorum agrees, or every result agrees and no other owner can
    run it), unverifiable (a quorum never can), or verifying."""
    counted = tally(state.votes(), prefer=current.agreement_key)
    state = state.model_copy(update={"note": None})  # a note of waiting for an owner is old news
    if counted.key is not None and counted.owners >= state.quorum:
        return _accepted(rules, state, counted.key, now, current=current.attempt)
    if not reachable(state.quorum, state.max_replicas, counted.owners, counted.results):
        return unverifiable(state, now)
    step = shortfall(rules, state, live, now)
    if step is not None:
        return step
    return _verifying(state, now, f"verifying:{current.attempt}", note=None)


def _verifying(state: TaskState, now: datetime, name: str, *, note: str | None) -> Step:
    """The task waits for more results (outcome `pending`, with `note`), told by a TaskVerifying
    event named `name`."""
    updated = state.model_copy(update={"outcome": "pending", "note": note})
    event = TaskVerifying(
        id=task_event_id(state.task_id, name),
        source=SOURCE,
        copro_id=state.task.copro_id,
        time=now,
        task_id=state.task_id,
        verification=updated.verification(),  # type: ignore[arg-type]
    )
    return Step(with_events(updated, [("verifying", event)]))


def owner_wait_over(rules: GridRules, state: TaskState, now: datetime) -> bool:
    """Whether the grace for a second owner's node to announce itself passed since it was queued."""
    since = state.queued_at or state.task.time
    return now >= since + timedelta(seconds=rules.owner_wait_s)


def shortfall(
    rules: GridRules, state: TaskState, live: Iterable[LiveNode] | None, now: datetime
) -> Step | None:
    """The task decided without its quorum because no other owner can run it
    (`verification.short_of_owners`), or None when the usual rule applies (`live` None: the
    live nodes are not known). Results that all agree: accepted unchecked; that disagree: the
    task waits for a new owner (its verification says so) until it expires."""
    if live is None or state.final or state.rechecked or state.policy is None:
        return None
    votes = state.votes()
    counted = tally(votes)
    rule = short_of_owners(
        wanted=wanted(state),
        running=len(state.open_replicas),
        results=counted.results,
        distinct=groups(votes),
        new_owners=len(new_owners(state, live)),
        waited_enough=owner_wait_over(rules, state, now),
    )
    if rule == "accept_unchecked" and counted.key is not None:
        if not any(r.result is not None for r in state.replicas if r.agreement_key == counted.key):
            return None  # stored before results were kept: it waits for a quorum as it did
        note = (
            f"owners_short: no other owner's node can run {state.task.task_type}; "
            f"{counted.owners} of the {state.quorum} owners wanted agreed, taken unchecked"
        )
        reduced = state.model_copy(update={"quorum": counted.owners, "note": note})
        return _accepted(rules, reduced, counted.key, now, unchecked=True)
    if rule == "await_owner":
        note = (
            f"owners_short: {counted.results} results disagree and no other owner's node can run "
            f"{state.task.task_type}; waiting for one until the task expires"
        )
        if state.note == note:
            return None
        return _verifying(state, now, f"verifying:awaiting_owner:{state.attempt}", note=note)
    return None


def _accepted(
    rules: GridRules,
    state: TaskState,
    key: str,
    now: datetime,
    *,
    current: int | None = None,
    unchecked: bool | None = None,
) -> Step:
    """Accept the result agreeing on `key`, published as replica `current`'s (the one just
    reported; None: the latest that gave it). `unchecked`: taken without a quorum (default:
    the policy "trusted" takes it alone)."""
    if unchecked is None:
        unchecked = state.policy == "trusted"
    replicas: list[Replica] = []
    cancel: list[str] = []
    judgments: list[Judgment] = []
    for r in state.replicas:
        if r.has_result and r.verdict == "pending":
            verdict: JudgedVerdict
            if r.agreement_key == key:
                verdict = "unchecked" if unchecked else ("flagged" if r.flags else "valid")
                r = r.model_copy(update={"verdict": verdict, "outcome": "completed"})
            else:
                verdict = "invalid"
                r = r.model_copy(update={"verdict": "invalid", "outcome": "invalid"})
            if verdict == "flagged":
                pass  # counted when it reported
            elif verdict == "valid" and r.attempt == state.recheck_of:
                pass  # right, but done before its node was caught: its new run starts from new work
            else:
                judgments.append(
                    Judgment(r.node_id, r.owner, verdict, state.task_id, r.attempt, state.task.copro_id)
                )
        elif r.open:
            cancel.append(r.node_id)
            r = r.ended(now, "not_needed", "not_needed")
        replicas.append(r)
    decided = state.model_copy(
        update={"replicas": replicas, "outcome": "accepted_unchecked" if unchecked else "accepted"}
    )
    # Kept for a re-check only when a trusted node's result was taken unchecked: an untrusted
    # node caught wrong later triggers none.
    if (
        unchecked
        and rules.recheck_window_s > 0
        and any(r.verdict == "unchecked" and r.trusted for r in replicas)
    ):
        decided = decided.model_copy(
            update={"recheck_until": now + timedelta(seconds=rules.recheck_window_s)}
        )
    agreeing = [r for r in replicas if r.has_result and r.agreement_key == key and r.result is not None]
    chosen = next((r for r in agreeing if r.attempt == current), None) or max(
        agreeing, key=lambda r: r.attempt
    )
    assert chosen.result is not None and chosen.usage is not None
    event = TaskCompleted(
        id=state.event_id("completed"),
        source=SOURCE,
        copro_id=state.task.copro_id,
        time=now,
        task_id=state.task_id,
        task_type=state.task.task_type,
        attempt=chosen.attempt,
        node_id=chosen.node_id,
        result=chosen.result,
        usage=chosen.usage,
        co2_grams=task_grams(decided),
        verification=decided.verification(),
    )
    return Step(
        with_events(decided, [("completed", event)], status="completed", final_at=now), cancel, judgments
    )
