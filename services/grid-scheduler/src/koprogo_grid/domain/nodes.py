"""The nodes as the board sees them: one polling for work, one alive now, what each may run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from koprogo_grid.domain.task_state import NodeFootprint, TaskState
from koprogo_shared import subjects
from koprogo_shared.task_events import TaskSubmitted


@dataclass(frozen=True, slots=True)
class PollingNode:
    """A node asking for work, as its heartbeat describes it, with its owner and standing."""

    node_id: str
    task_types: frozenset[str]
    pools: frozenset[str]
    footprint: NodeFootprint
    owner: str = ""
    trusted: bool = False

    @property
    def owner_id(self) -> str:
        return self.owner or self.node_id


@dataclass(frozen=True, slots=True)
class LiveNode:
    """A node alive now, as its heartbeats describe it: who owns it, what it runs, where from."""

    node_id: str
    owner: str
    task_types: frozenset[str]
    pools: frozenset[str] = frozenset({subjects.SHARED_POOL})


def may_run(node: PollingNode | LiveNode, task: TaskSubmitted) -> bool:
    """A shared-pool node runs any copro's tasks; a copro's own node only that copro's."""
    if subjects.SHARED_POOL in node.pools:
        return True
    return task.copro_id is not None and subjects.copro_pool(task.copro_id) in node.pools


def new_owners(state: TaskState, live: Iterable[LiveNode]) -> set[str]:
    """Owners not already on the task (running, reported, refused) with a live node able to run it."""
    busy = state.busy_owners()
    return {
        n.owner or n.node_id
        for n in live
        if state.task.task_type in n.task_types
        and may_run(n, state.task)
        and (n.owner or n.node_id) not in busy
    }
