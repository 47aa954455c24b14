"""Nodes whose poll found no task: kept per task type, the longest-waiting first, until a task
fits one of them or its poll has waited long enough."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from koprogo_grid.domain.nodes import PollingNode
from koprogo_grid.domain.task_state import TaskState


@dataclass(slots=True)
class Waiter:
    node: PollingNode
    reply: Any  # what the entrypoint needs to answer the poll (its inbox); opaque here
    until: float  # monotonic seconds


class WaitingNodes:
    """The waiting lists, per task type. `fits` (the board's) tells whether a node may take a task."""

    def __init__(self) -> None:
        self._waiters: dict[str, OrderedDict[str, Waiter]] = {}

    def wait(self, waiter: Waiter) -> Waiter | None:
        """Keep `waiter` until a task fits it; returns the same node's previous waiter, to be answered."""
        previous = None
        for task_type in waiter.node.task_types:
            found = self._waiters.setdefault(task_type, OrderedDict()).pop(waiter.node.node_id, None)
            previous = previous or found
            self._waiters[task_type][waiter.node.node_id] = waiter
        return previous

    def waiter_for(
        self,
        state: TaskState,
        now: datetime,
        skip_owners: set[str],
        fits: Callable[[TaskState, PollingNode, datetime], bool],
    ) -> Waiter | None:
        """The longest-waiting node that may take a replica of `state`, taken off every waiting list."""
        waiting = self._waiters.get(state.task.task_type)
        if not waiting:
            return None
        for node_id, waiter in waiting.items():
            if waiter.node.owner_id not in skip_owners and fits(state, waiter.node, now):
                self._drop_waiter(node_id, waiter)
                return waiter
        return None

    def per_type(self) -> list[tuple[str, OrderedDict[str, Waiter]]]:
        """Each task type's waiting list (the lists themselves: `waiter_for` shortens them)."""
        return list(self._waiters.items())

    def waiters_until(self, monotonic_now: float) -> list[Waiter]:
        """Waiters whose poll has waited long enough: taken off, to be answered "no work"."""
        done: dict[str, Waiter] = {}
        for waiting in self._waiters.values():
            for node_id, waiter in waiting.items():
                if waiter.until <= monotonic_now:
                    done[node_id] = waiter
        for node_id, waiter in done.items():
            self._drop_waiter(node_id, waiter)
        return list(done.values())

    def waiting_count(self) -> int:
        return len({node_id for waiting in self._waiters.values() for node_id in waiting})

    def _drop_waiter(self, node_id: str, waiter: Waiter) -> None:
        for task_type in waiter.node.task_types:
            waiting = self._waiters.get(task_type)
            if waiting is not None and waiting.get(node_id) is waiter:
                del waiting[node_id]
