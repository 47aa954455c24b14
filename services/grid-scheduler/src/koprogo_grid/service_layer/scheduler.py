"""The grid scheduler's use cases: take tasks, hand them to polling nodes, decide on reports.

Every transition is stored (`TaskStateStore`) before its events are published and before a node
is answered, so a scheduler that dies at any point restarts from its store: a task stored as
assigned whose node never heard of it is taken back when `start_grace_s` passes; events stored in
a state's outbox but not published are published again at start (their ids are deterministic).
Transitions of one task are serialised (a lock per task); different tasks go concurrently.

Once a task is final and its decision published, what the user sent goes: its document is deleted
from the object store and its tombstone keeps no parameters and no result (GDPR: contents live in
the ledger alone, where an erasure reaches them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from koprogo_grid.domain.board import PollingNode, TaskBoard, TaskState, Waiter
from koprogo_grid.service_layer.ports import TaskDocumentBin, TaskEventBus, TaskStateStore
from koprogo_shared import subjects
from koprogo_shared.events import utc_now
from koprogo_shared.task_events import (
    GridPollReply,
    TaskCancelRequested,
    TaskResultReported,
    TaskStarted,
    TaskSubmitted,
)

log = logging.getLogger(__name__)

Respond = Callable[[Any, GridPollReply], Awaitable[None]]
# Tells a node to stop running a task (core NATS, `subjects.node_cancel`).
CancelNode = Callable[[str, str], Awaitable[None]]


class GridScheduler:
    def __init__(
        self,
        board: TaskBoard,
        store: TaskStateStore,
        bus: TaskEventBus,
        respond: Respond,
        cancel_node: CancelNode,
        documents: TaskDocumentBin | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.board = board
        self._store = store
        self._bus = bus
        self._respond = respond
        self._cancel_node = cancel_node
        self._documents = documents
        self._clock = clock
        self._monotonic = monotonic
        self._locks: dict[str, asyncio.Lock] = {}
        self._unpublished: dict[str, TaskState] = {}
        self.dispatched = 0
        self.refused_reports = 0

    async def start(self) -> None:
        """Rebuild the board from the store and publish what a previous run may not have."""
        states = await self._store.load()
        self.board.load(states)
        for state in states:
            if state.outbox:
                self._unpublished[state.task_id] = state
        await self._publish_pending()
        log.info("grid scheduler loaded %d tasks: %s", len(states), self.board.counts())

    # ----- events from the stream ------------------------------------------------------------

    async def on_submitted(self, task: TaskSubmitted) -> None:
        async with self._lock(task.id):
            state = self.board.submitted(task, self._clock())
            if state is None:
                return  # known: a redelivered submission
            await self._commit(state)
        if state.status == "pending":
            await self._offer()

    async def on_cancel_requested(self, request: TaskCancelRequested) -> None:
        async with self._lock(request.task_id):
            state = self.board.get(request.task_id)
            if state is None or state.task.copro_id != request.copro_id:
                return  # unknown here (final and forgotten, or another copro's id): nothing to cancel
            node = state.node_id
            cancelled = self.board.cancel(state, self._clock())
            if cancelled is None:
                return
            await self._commit(cancelled)
        if node is not None:
            await self._cancel_node(node, request.task_id)

    async def on_started(self, event: TaskStarted, subject: str) -> None:
        if not self._from_its_node(subject, event.node_id):
            return
        async with self._lock(event.task_id):
            state = self.board.get(event.task_id)
            running = None if state is None else self.board.started(state, event, self._clock())
            if running is None:
                self.refused_reports += 1
                log.info(
                    "ignoring a start of task %s attempt %d from %s",
                    event.task_id,
                    event.attempt,
                    event.node_id,
                )
                return
            await self._commit(running)

    async def on_reported(self, report: TaskResultReported, subject: str) -> None:
        if not self._from_its_node(subject, report.node_id):
            return
        async with self._lock(report.task_id):
            state = self.board.get(report.task_id)
            decided = None if state is None else self.board.reported(state, report, self._clock())
            if decided is None:
                self.refused_reports += 1
                log.info(
                    "ignoring a report of task %s attempt %d from %s (not its current attempt)",
                    report.task_id,
                    report.attempt,
                    report.node_id,
                )
                return
            await self._commit(decided)
        if decided.status == "pending":
            await self._offer()

    def _from_its_node(self, subject: str, node_id: str) -> bool:
        if subjects.task_sender(subject) != subjects.subject_token(node_id):
            self.refused_reports += 1
            log.warning("refused a task report for node %r heard on %s", node_id, subject)
            return False
        return True

    # ----- polls -------------------------------------------------------------------------------

    async def poll(self, node: PollingNode, reply: Any, wait_s: float) -> None:
        """Answer `reply` with the oldest task `node` may run, at once or when one comes within `wait_s`."""
        if await self._try_assign(node, reply):
            return
        if wait_s <= 0:
            await self._respond(reply, GridPollReply(reason="no_work"))
            return
        previous = self.board.wait(Waiter(node, reply, self._monotonic() + wait_s))
        if previous is not None:
            await self._respond(previous.reply, GridPollReply(reason="no_work"))
        # A task may have been queued between the look above and the wait: offer again.
        await self._offer()

    async def _try_assign(self, node: PollingNode, reply: Any) -> bool:
        now = self._clock()
        while (state := self.board.next_task(node, now)) is not None:
            async with self._lock(state.task_id):
                current = self.board.get(state.task_id)
                if current is None or current.status != "pending":
                    continue
                assigned = self.board.assign(current, node, now)
                try:
                    await self._commit(assigned)
                except Exception:
                    self.board.put(current)  # back on its queue
                    raise
            self.dispatched += 1
            await self._respond(reply, GridPollReply(assignment=self.board.assignment(assigned)))
            return True
        return False

    async def _offer(self) -> None:
        """Hand queued tasks to waiting nodes while both exist."""
        for waiter in self.board.matches():
            if not await self._try_assign(waiter.node, waiter.reply):
                self.board.wait(waiter)

    # ----- time --------------------------------------------------------------------------------

    async def tick(self, alive: set[str]) -> None:
        """Answer polls that waited long enough, take back overdue attempts, drop old tombstones."""
        for waiter in self.board.waiters_until(self._monotonic()):
            await self._respond(waiter.reply, GridPollReply(reason="no_work"))
        now = self._clock()
        requeued = False
        for state, reason, message in self.board.overdue(now, alive):
            async with self._lock(state.task_id):
                current = self.board.get(state.task_id)
                if current is None or current.final or current is not state:
                    continue
                if reason == "expired":
                    decided = self.board.expire(current, now)
                else:
                    decided = self.board.requeue(current, reason, message, now)
                    log.info("task %s: %s", current.task_id, message)
                node = current.node_id
                await self._commit(decided)
            if reason == "expired" and node is not None:
                await self._cancel_node(node, state.task_id)
            requeued = requeued or decided.status == "pending"
        for task_id in self.board.tombstones_before(now):
            await self._store.delete(task_id)
            self.board.forget(task_id)
            self._locks.pop(task_id, None)
        await self._publish_pending()
        if requeued:
            await self._offer()

    # ----- storing and publishing ----------------------------------------------------------------

    async def _commit(self, state: TaskState) -> None:
        await self._store.save(state)
        self.board.put(state)
        if state.outbox:
            try:
                await self._bus.publish(state.outbox)
            except Exception as exc:
                # Stored: the tick (or the next start) publishes it again with the same ids.
                log.warning("task %s: events not published yet (%r)", state.task_id, exc)
                self._unpublished[state.task_id] = state
                return
        if state.final:
            await self._forget_contents(state)

    async def _publish_pending(self) -> None:
        for task_id, state in list(self._unpublished.items()):
            try:
                await self._bus.publish(state.outbox)
            except Exception as exc:
                log.warning("task %s: events still not published (%r)", task_id, exc)
                return
            self._unpublished.pop(task_id, None)
            if state.final:
                await self._forget_contents(state)

    async def _forget_contents(self, state: TaskState) -> None:
        """A final, published task: delete its document, keep a tombstone without contents."""
        try:
            if state.task.document is not None and self._documents is not None:
                await self._documents.delete(state.task.document.object_name)
            tombstone = state.model_copy(
                update={"task": state.task.model_copy(update={"parameters": {}}), "outbox": []}
            )
            await self._store.save(tombstone)
            self.board.put(tombstone)
        except Exception as exc:
            # The next start finds the state final with its outbox, publishes it again and retries this.
            log.warning("task %s: contents not forgotten yet (%r)", state.task_id, exc)

    def _lock(self, task_id: str) -> asyncio.Lock:
        lock = self._locks.get(task_id)
        if lock is None:
            lock = self._locks[task_id] = asyncio.Lock()
        return lock
