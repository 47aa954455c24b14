"""Handing a replica of a task to a node, what the node receives, and its start. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta

from koprogo_grid.domain.nodes import PollingNode
from koprogo_grid.domain.rules import GridRules
from koprogo_grid.domain.task_state import SOURCE, Replica, Step, TaskState, replaced, with_events
from koprogo_grid.domain.verification import policy_for, spot_check_drawn
from koprogo_shared.task_events import TaskAssigned, TaskAssignment, TaskStarted, task_event_id


def assign(rules: GridRules, salt: bytes, state: TaskState, node: PollingNode, now: datetime) -> Step:
    """Hand a replica of `state` to `node` (the policy is fixed with the first one)."""
    attempt = state.attempt + 1
    deadline = min(now + timedelta(seconds=rules.run_deadline_s(state.task.task_type)), state.expires_at)
    policy, quorum, max_replicas = state.policy, state.quorum, state.max_replicas
    if policy is None:
        drawn = node.trusted and spot_check_drawn(state.task_id, salt, rules.spot_check_rate)
        policy = policy_for(node.trusted, drawn)
        quorum = 1 if policy == "trusted" else rules.quorum
        max_replicas = max(rules.max_replicas, quorum)
    elif policy == "trusted" and not node.trusted:
        # The trusted node's replica was taken back: an untrusted node's result needs a quorum.
        policy, quorum, max_replicas = "quorum", rules.quorum, max(rules.max_replicas, quorum)
    event = TaskAssigned(
        id=task_event_id(state.task_id, f"assigned:{attempt}"),
        source=SOURCE,
        copro_id=state.task.copro_id,
        time=now,
        task_id=state.task_id,
        task_type=state.task.task_type,
        attempt=attempt,
        node_id=node.node_id,
        deadline=deadline,
    )
    replica = Replica(
        attempt=attempt,
        node_id=node.node_id,
        owner=node.owner_id,
        trusted=node.trusted,
        footprint=node.footprint,
        start_by=now + timedelta(seconds=rules.start_grace_s),
        run_deadline=deadline,
    )
    return Step(
        with_events(
            state,
            [("assigned", event)],
            attempt=attempt,
            policy=policy,
            quorum=quorum,
            max_replicas=max_replicas,
            replicas=[*state.replicas, replica],
            note=None,  # an owner came: the task no longer waits for one
        )
    )


def assignment(state: TaskState, attempt: int) -> TaskAssignment:
    """What the node given `attempt` receives (unsigned: the service layer signs it)."""
    replica = state.replica(attempt)
    assert replica is not None and replica.run_deadline is not None
    return TaskAssignment(
        task_id=state.task_id,
        copro_id=state.task.copro_id,
        task_type=state.task.task_type,
        attempt=attempt,
        parameters=state.task.parameters,
        document=state.task.document,
        deadline=replica.run_deadline,
    )


def with_assignment_digest(state: TaskState, attempt: int, digest: str) -> TaskState:
    replica = state.replica(attempt)
    assert replica is not None
    return state.model_copy(
        update={"replicas": replaced(state, replica.model_copy(update={"assignment_digest": digest}))}
    )


def current(state: TaskState, node_id: str, attempt: int) -> Replica | None:
    """The open replica `attempt` of `node_id`, or None (an old attempt, another node, decided)."""
    if state.final:
        return None
    replica = state.replica(attempt)
    if replica is None or not replica.open or replica.node_id != node_id:
        return None
    return replica


def started(state: TaskState, event: TaskStarted, now: datetime) -> Step | None:
    """The running state, or None when the start is not for an assigned replica."""
    replica = current(state, event.node_id, event.attempt)
    if replica is None or replica.phase != "assigned":
        return None
    running = replica.model_copy(update={"phase": "running", "started_at": event.time})
    # The state carries no event: the node's own TaskStarted is the fact.
    return Step(with_events(state, [], replicas=replaced(state, running)))
