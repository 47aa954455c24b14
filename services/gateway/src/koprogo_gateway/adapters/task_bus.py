"""The task use case's port to the event log: publish a task event, and read a TaskSubmitted back by
its task id (the ledger's projection may lag behind the caller's first GET). NATS adapter and fake.

A TaskSubmitted is stored under `subjects.task_submitted_key(copro, task_id)`, so the last
message on that subject in KOPROGO_EVENTS is the task's submission.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from koprogo_gateway.adapters.chat_bus import publish_refused
from koprogo_gateway.domain.errors import BusUnavailableError
from koprogo_shared import subjects
from koprogo_shared.events import Event
from koprogo_shared.publishing import publish_event
from koprogo_shared.task_events import TaskSubmitted


class TaskBus(abc.ABC):
    @abc.abstractmethod
    async def publish(self, subject: str, event: Event) -> None:
        """Store `event` durably; RequestTooLargeError (413), BusFullError or BusUnavailableError (503) if not."""

    @abc.abstractmethod
    async def submitted(self, copros: Sequence[str | None] | None, task_id: str) -> TaskSubmitted | None:
        """The task's TaskSubmitted if it was submitted for one of `copros` (None: any copro);
        BusUnavailableError (503) when the event log cannot be read."""


class NatsTaskBus(TaskBus):
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def publish(self, subject: str, event: Event) -> None:
        try:
            await publish_event(self.js, subject, event)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise publish_refused(exc) from exc

    async def submitted(self, copros: Sequence[str | None] | None, task_id: str) -> TaskSubmitted | None:
        if copros is None:
            # Any copro's: the last message on the wildcard subject of this task id.
            any_copro = f"{subjects.TASK_SUBMITTED_ALL.removesuffix('>')}*.{subjects.subject_token(task_id)}"
            found = await self._last(any_copro)
            return found if found is not None and found.id == task_id else None
        for copro_id in copros:
            found = await self._last(subjects.task_submitted_key(copro_id, task_id))
            # Two copro ids may share a subject token (`subject_token`): the event's own copro decides.
            if found is not None and found.id == task_id and found.copro_id == copro_id:
                return found
        return None

    async def _last(self, subject: str) -> TaskSubmitted | None:
        try:
            msg = await self.js.get_last_msg(subjects.EVENTS_STREAM, subject)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise BusUnavailableError(f"the event log cannot be read ({type(exc).__name__})") from exc
        return TaskSubmitted.model_validate_json(msg.data or b"")


class FakeTaskBus(TaskBus):
    """In memory: what was published, in order; `refuse_with` makes every publish raise it."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Event]] = []
        self.refuse_with: Exception | None = None

    async def publish(self, subject: str, event: Event) -> None:
        await asyncio.sleep(0)
        if self.refuse_with is not None:
            raise self.refuse_with
        self.published.append((subject, event))

    async def submitted(self, copros: Sequence[str | None] | None, task_id: str) -> TaskSubmitted | None:
        for _, event in reversed(self.published):
            if not isinstance(event, TaskSubmitted) or event.id != task_id:
                continue
            if copros is None or event.copro_id in copros:
                return event
        return None
