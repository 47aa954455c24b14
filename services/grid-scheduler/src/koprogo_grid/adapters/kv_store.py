"""Task states in the JetStream key-value bucket `GRID_TASKS_BUCKET`, one key per task; the trust
book in `GRID_NODES_BUCKET`, one key per node (`node.<id>`), beside the spot-check salt."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from koprogo_grid.domain.task_state import TaskState
from koprogo_grid.domain.trust import NodeStanding
from koprogo_grid.service_layer.ports import NodeStandingStore, TaskStateStore
from koprogo_shared.kv_snapshot import kv_values
from koprogo_shared.logging_setup import invalid_fields
from koprogo_shared.subjects import GRID_NODES_BUCKET, GRID_TASKS_BUCKET

log = logging.getLogger(__name__)


class KeyValueTaskStore(TaskStateStore):
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> KeyValueTaskStore:
        return cls(await js.key_value(GRID_TASKS_BUCKET))

    async def load(self) -> list[TaskState]:
        states: list[TaskState] = []
        for key, value in (await kv_values(self._kv)).items():
            try:
                states.append(TaskState.model_validate_json(value))
            except ValidationError as exc:
                # Kept in the bucket for an operator; the task cannot be scheduled. The fields
                # only: pydantic's message quotes the values, the task's parameters among them.
                log.error("unreadable task state under %s: %s", key, invalid_fields(exc))
        return states

    async def save(self, state: TaskState) -> None:
        await self._kv.put(state.task_id, state.model_dump_json().encode())

    async def delete(self, task_id: str) -> None:
        try:
            await self._kv.purge(task_id)
        except nats.js.errors.NotFoundError:
            pass
        await asyncio.sleep(0)


SALT_KEY = "scheduler.spot_check_salt"
_SAFE_KEY = re.compile(r"[-_=A-Za-z0-9]{1,200}")


def node_key(node_id: str) -> str:
    """The bucket key of a node: `node.<id>` when the id is a valid key token, else its hex."""
    if _SAFE_KEY.fullmatch(node_id):
        return f"node.{node_id}"
    return f"node.x{node_id.encode().hex()}"


class KeyValueNodeStandingStore(NodeStandingStore):
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> KeyValueNodeStandingStore:
        return cls(await js.key_value(GRID_NODES_BUCKET))

    async def load(self) -> list[NodeStanding]:
        standings: list[NodeStanding] = []
        for key, value in (await kv_values(self._kv)).items():
            if not key.startswith("node."):
                continue
            try:
                standings.append(NodeStanding.model_validate_json(value))
            except ValidationError as exc:
                log.error("unreadable node standing under %s: %s", key, invalid_fields(exc))
        return standings

    async def save(self, standing: NodeStanding) -> None:
        await self._kv.put(node_key(standing.node_id), standing.model_dump_json().encode())

    async def salt(self) -> bytes:
        try:
            entry = await self._kv.get(SALT_KEY)
            if entry.value:
                return base64.b64decode(entry.value)
        except nats.js.errors.NotFoundError:  # not made yet (KeyNotFoundError, KeyDeletedError)
            pass
        salt = secrets.token_bytes(32)
        try:
            await self._kv.create(SALT_KEY, base64.b64encode(salt))
        except nats.js.errors.KeyWrongLastSequenceError:
            # Another start made it first: use that one.
            entry = await self._kv.get(SALT_KEY)
            return base64.b64decode(entry.value or b"")
        return salt
