"""How the `GridScheduler` keeps a transition: the judgments of nodes counted in the trust book and
stored, the task's state stored, then their events published (again by the tick, or at the next
start, while the bus is down).

Once a task is final and its decision published, what the user sent goes: its document is deleted
from the object store and its tombstone keeps no parameters and no result (GDPR: contents live in
the ledger alone, where an erasure reaches them).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime

from koprogo_grid.domain.board import TaskBoard
from koprogo_grid.domain.task_state import Step, TaskState
from koprogo_grid.domain.trust import NodeStanding, TrustBook
from koprogo_grid.service_layer.ports import NodeStandingStore, TaskDocumentBin, TaskEventBus, TaskStateStore
from koprogo_shared.task_events import NodeTrustChanged

log = logging.getLogger(__name__)

# Tells a node to stop running a task (core NATS, `subjects.node_cancel`).
CancelNode = Callable[[str, str], Awaitable[None]]


class TaskRecords:
    """The `GridScheduler`'s storing and publishing. Its state is the scheduler's (set in its constructor)."""

    board: TaskBoard
    trust: TrustBook
    outcomes: Counter[str]
    owners_short: Counter[str]
    trust_changes: Counter[str]
    _store: TaskStateStore
    _standings: NodeStandingStore
    _bus: TaskEventBus
    _cancel_node: CancelNode
    _documents: TaskDocumentBin | None
    _clock: Callable[[], datetime]
    _trust_lock: asyncio.Lock
    _unpublished: dict[str, TaskState]
    _unpublished_trust: dict[str, NodeStanding]
    _unsaved_keys: dict[str, NodeStanding]
    _to_recheck: list[tuple[str, datetime]]

    async def _apply(self, step: Step) -> None:
        """Count the judgments (stored first), store and publish the task's state, tell nodes to stop."""
        judged: list[NodeStanding] = []
        now = self._clock()
        async with self._trust_lock:  # judgments of one node from concurrent tasks build on each other
            for judgment in step.judgments:
                was_trusted = self.trust.is_trusted(judgment.node_id)
                standing = self.trust.judge(judgment, now)
                if standing is None:
                    continue
                if was_trusted and not standing.trusted and judgment.verdict in ("invalid", "refused"):
                    self._to_recheck.append((judgment.node_id, now))
                pending = self._unpublished_trust.get(standing.node_id)
                if pending is not None and pending.outbox:
                    # Not published yet: its events ride along with the new ones.
                    standing = standing.model_copy(update={"outbox": [*pending.outbox, *standing.outbox]})
                await self._standings.save(standing)
                current = self.trust.get(standing.node_id)
                if current is not None and current.public_key and standing.public_key is None:
                    # Its key was pinned while this was being stored: keep it (stored by the tick).
                    standing = standing.model_copy(update={"public_key": current.public_key})
                    self._unsaved_keys[standing.node_id] = standing
                else:
                    self._unsaved_keys.pop(standing.node_id, None)
                self.trust.put(standing)
                if standing.outbox:
                    self._unpublished_trust[standing.node_id] = standing
                    judged.append(standing)
        await self._commit(step.state)
        for standing in judged:
            await self._publish_standing(standing)
        for node_id in step.cancel_nodes:
            await self._cancel_node(node_id, step.state.task_id)

    async def _commit(self, state: TaskState) -> None:
        pending = self._unpublished.get(state.task_id)
        if pending is not None and pending.outbox:
            # A previous transition's events are not published yet: they ride along with these.
            earlier = [entry for entry in pending.outbox if entry not in state.outbox]
            state = state.model_copy(update={"outbox": [*earlier, *state.outbox]})
        await self._store.save(state)
        self.board.put(state)
        if state.final and state.outbox:  # a decision (a re-check ended without one is not)
            verification = state.verification()
            self.outcomes[verification.outcome if verification else f"no_verification_{state.status}"] += 1
        if state.outbox and state.note is not None and state.note.startswith("owners_short"):
            self.owners_short[state.outcome if state.final else "awaiting_owner"] += 1
        if state.outbox:
            try:
                await self._bus.publish(state.outbox)
            except Exception as exc:
                # Stored: the tick (or the next start) publishes it again with the same ids.
                log.warning("task %s: events not published yet (%r)", state.task_id, exc)
                self._unpublished[state.task_id] = state
                return
        self._unpublished.pop(state.task_id, None)
        if state.final:
            await self._forget_contents(state)

    async def _publish_standing(self, standing: NodeStanding) -> bool:
        try:
            await self._bus.publish(standing.outbox)
        except Exception as exc:
            log.warning("node %s: trust events not published yet (%r)", standing.node_id, exc)
            return False
        if self._unpublished_trust.get(standing.node_id) is standing:
            del self._unpublished_trust[standing.node_id]
        for _, payload in standing.outbox:
            self.trust_changes[NodeTrustChanged.model_validate_json(payload).reason] += 1
        async with self._trust_lock:
            current = self.trust.get(standing.node_id)
            if current is None or current.outbox != standing.outbox:
                return True
            # Published: a restart need not publish it again.
            published = current.model_copy(update={"outbox": []})
            try:
                await self._standings.save(published)
                self.trust.put(published)
            except Exception as exc:
                log.info(
                    "node %s: published trust events stay in its stored standing (%r)", standing.node_id, exc
                )
        return True

    async def _publish_pending(self) -> None:
        for task_id, state in list(self._unpublished.items()):
            try:
                await self._bus.publish(state.outbox)
            except Exception as exc:
                log.warning("task %s: events still not published (%r)", task_id, exc)
                return
            if self._unpublished.get(task_id) is state:
                self._unpublished.pop(task_id, None)
            if state.final:
                await self._forget_contents(state)
        for standing in list(self._unpublished_trust.values()):
            if not await self._publish_standing(standing):
                return

    async def _forget_contents(self, state: TaskState) -> None:
        """A final, published task: delete its document, keep a tombstone without contents (a
        result taken unchecked keeps them until its re-check window ends)."""
        if (
            state.outcome == "accepted_unchecked"
            and not state.rechecked
            and state.recheck_until is not None
            and state.recheck_until > self._clock()
        ):
            if state.outbox:
                published = state.model_copy(update={"outbox": []})
                await self._store.save(published)
                self.board.put(published)
            return
        try:
            if state.task.document is not None and self._documents is not None:
                await self._documents.delete(state.task.document.object_name)
            tombstone = state.model_copy(
                update={
                    "task": state.task.model_copy(update={"parameters": {}}),
                    "replicas": [r.model_copy(update={"result": None}) for r in state.replicas],
                    "outbox": [],
                    "recheck_until": None,
                }
            )
            await self._store.save(tombstone)
            self.board.put(tombstone)
        except Exception as exc:
            # The next start finds the state final with its outbox, publishes it again and retries this.
            log.warning("task %s: contents not forgotten yet (%r)", state.task_id, exc)
