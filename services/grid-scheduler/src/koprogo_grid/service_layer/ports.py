"""The scheduler's ports: where task states are kept, where its events go. Each has a fake."""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence

from koprogo_grid.domain.task_state import TaskState
from koprogo_grid.domain.trust import NodeStanding


class TaskStateStore(ABC):
    """The durable copy of the board (the real one: a JetStream key-value bucket)."""

    @abstractmethod
    async def load(self) -> list[TaskState]:
        """Every stored state (the board is rebuilt from them after a restart)."""

    @abstractmethod
    async def save(self, state: TaskState) -> None:
        """Store `state` durably before anything is published or answered for it."""

    @abstractmethod
    async def delete(self, task_id: str) -> None: ...


class NodeStandingStore(ABC):
    """The durable trust book (the real one: the key-value bucket `GRID_NODES_BUCKET`), and the
    scheduler's secret salt for the spot-check draw, kept beside it so it survives restarts."""

    @abstractmethod
    async def load(self) -> list[NodeStanding]: ...

    @abstractmethod
    async def save(self, standing: NodeStanding) -> None:
        """Store `standing` durably before its events are published."""

    @abstractmethod
    async def salt(self) -> bytes:
        """The stored salt, made (random, 32 bytes) and stored the first time."""


class TaskEventBus(ABC):
    """Publishes the events of a transition (JetStream, with their ids as `Nats-Msg-Id`)."""

    @abstractmethod
    async def publish(self, outbox: Sequence[tuple[str, str]]) -> None: ...


class TaskDocumentBin(ABC):
    """Removes a finished task's document from the object store (the node that needed it is done)."""

    @abstractmethod
    async def delete(self, object_name: str) -> None:
        """Delete it; a document already gone is no error."""


class FakeTaskDocumentBin(TaskDocumentBin):
    def __init__(self) -> None:
        self.deleted: list[str] = []

    async def delete(self, object_name: str) -> None:
        self.deleted.append(object_name)


class FakeTaskStateStore(TaskStateStore):
    def __init__(self) -> None:
        self.saved: dict[str, TaskState] = {}
        self.fail_next_save = False

    async def load(self) -> list[TaskState]:
        return list(self.saved.values())

    async def save(self, state: TaskState) -> None:
        if self.fail_next_save:
            self.fail_next_save = False
            raise ConnectionError("store unavailable")
        self.saved[state.task_id] = state

    async def delete(self, task_id: str) -> None:
        self.saved.pop(task_id, None)


class FakeTaskEventBus(TaskEventBus):
    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []
        # While True every publish fails (a bus that is down for a while).
        self.fail_next = False

    async def publish(self, outbox: Sequence[tuple[str, str]]) -> None:
        if self.fail_next:
            raise ConnectionError("bus unavailable")
        self.published.extend(outbox)


class FakeNodeStandingStore(NodeStandingStore):
    def __init__(self) -> None:
        self.saved: dict[str, NodeStanding] = {}
        self.stored_salt: bytes | None = None

    async def load(self) -> list[NodeStanding]:
        return list(self.saved.values())

    async def save(self, standing: NodeStanding) -> None:
        self.saved[standing.node_id] = standing

    async def salt(self) -> bytes:
        if self.stored_salt is None:
            self.stored_salt = secrets.token_bytes(32)
        return self.stored_salt
