"""Task states in the JetStream key-value bucket `GRID_TASKS_BUCKET`, one key per task."""

from __future__ import annotations

import asyncio
import logging

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from koprogo_grid.domain.board import TaskState
from koprogo_grid.service_layer.ports import TaskStateStore
from koprogo_shared.subjects import GRID_TASKS_BUCKET

log = logging.getLogger(__name__)


class KeyValueTaskStore(TaskStateStore):
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> KeyValueTaskStore:
        return cls(await js.key_value(GRID_TASKS_BUCKET))

    async def load(self) -> list[TaskState]:
        states: list[TaskState] = []
        watcher = await self._kv.watchall(ignore_deletes=True)
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=10.0)
                except TimeoutError:
                    break
                if entry is None:  # the end of the values present when the watch began
                    break
                if entry.value:
                    try:
                        states.append(TaskState.model_validate_json(entry.value))
                    except ValueError as exc:
                        # Kept in the bucket for an operator; the task cannot be scheduled.
                        log.error("unreadable task state under %s: %s", entry.key, exc)
        finally:
            await watcher.stop()
        return states

    async def save(self, state: TaskState) -> None:
        await self._kv.put(state.task_id, state.model_dump_json().encode())

    async def delete(self, task_id: str) -> None:
        try:
            await self._kv.purge(task_id)
        except nats.js.errors.NotFoundError:
            pass
        await asyncio.sleep(0)
