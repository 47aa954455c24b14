"""Where a node's answers go: the durable event log first, then the waiting gateway.

Streamed answers also go out piece by piece (core NATS, not stored), and the node listens
for the caller leaving (`subjects.chat_cancel`), so it stops generating for nobody: one
subscription for every request (`koprogo_shared.cancels`), as the cloud worker listens.

A node holding a NATS key replies on `subjects.node_reply` (the gateway's subject with its id
appended, which its key alone may publish on) and hears the cancels addressed to it alone
(`subjects.node_cancel`): the gateway knows who answered, and no node hears another's cancels.
Its durable outcomes go to `subjects.node_chat_completed`/`node_chat_failed` likewise, so the
ledger keeps a completion only from the node it names.

Each completion stored is also recorded on the node (`adapters/answers.py`): a work item
redelivered after its answer was stored is answered from that record (`stored_answer`,
`resend`), as the cloud worker answers from the event log.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_node.adapters.answers import AnswerRecord, MemoryAnswerRecord
from koprogo_shared import subjects
from koprogo_shared.cancels import CancelListener
from koprogo_shared.events import ChatCompleted, ChatDelta, ChatFailed, InferenceStarted, RunInference
from koprogo_shared.publishing import deliver_chat_outcome, publish_reply


class OutcomeSink(ABC):
    """Delivers the outcome of a RunInference."""

    @abstractmethod
    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None: ...

    @abstractmethod
    async def started(self, started: InferenceStarted, reply_subject: str) -> None:
        """Tell the waiting gateway which node is generating (not stored: core NATS only)."""

    async def delta(self, delta: ChatDelta, reply_subject: str) -> None:  # noqa: B027 (optional)
        """Send the next piece of a streamed answer (not stored: core NATS only)."""

    async def stored_answer(self, work: RunInference) -> ChatCompleted | None:
        """The answer this node already stored for `work`'s request (a redelivered item whose
        answer was stored before the node could ack it), or None."""
        return None

    async def resend(self, stored: ChatCompleted, reply_subject: str) -> None:
        """Send a stored answer to the waiting gateway again (it is stored already)."""
        await self.publish(stored, reply_subject)

    @asynccontextmanager
    async def caller_gone(self, request_id: str) -> AsyncIterator[threading.Event]:
        """A flag set when the caller of this streamed request leaves, while the block runs."""
        yield threading.Event()


class NatsOutcomeSink(OutcomeSink):
    """JetStream (KOPROGO_EVENTS, for the ledger) then core NATS to `reply_subject` (the gateway).

    (`deliver_chat_outcome`: the durable copy goes first.) `keyed_node_id`: the node's id when
    it holds a NATS key (its replies and cancels are then scoped to it), else None. `answers`:
    where its stored completions are recorded (in memory when not given).
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        keyed_node_id: str | None = None,
        answers: AnswerRecord | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._node_id = keyed_node_id
        self._answers = answers if answers is not None else MemoryAnswerRecord()
        # The cancels addressed to this node alone when it holds a key, else every request's.
        listened = subjects.CHAT_CANCEL_ALL if keyed_node_id is None else subjects.node_cancels(keyed_node_id)
        self._cancels = CancelListener(nc, listened, threading.Event)

    @property
    def node_cancels(self) -> CancelListener[threading.Event] | None:
        """Its listener when it hears the cancels addressed to this node alone (it holds a key):
        the grid's task cancels come there too (`adapters.grid.NatsTaskCancels`). None otherwise."""
        return self._cancels if self._node_id is not None else None

    async def start(self) -> None:
        """Listen for every caller's leaving, before any item runs."""
        await self._cancels.start()

    async def close(self) -> None:
        await self._cancels.close()

    def _reply(self, reply_subject: str) -> str:
        return reply_subject if self._node_id is None else subjects.node_reply(reply_subject, self._node_id)

    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None:
        await deliver_chat_outcome(self._nc, self._js, outcome, self._reply(reply_subject), self._node_id)
        if isinstance(outcome, ChatCompleted):
            # Stored: recorded before the item is acknowledged, for its redeliveries.
            await self._answers.keep(outcome)

    async def stored_answer(self, work: RunInference) -> ChatCompleted | None:
        return await self._answers.find(work.request_id)

    async def resend(self, stored: ChatCompleted, reply_subject: str) -> None:
        await publish_reply(self._nc, self._reply(reply_subject), stored.model_dump_json().encode())

    async def started(self, started: InferenceStarted, reply_subject: str) -> None:
        await publish_reply(self._nc, self._reply(reply_subject), started.model_dump_json().encode())

    async def delta(self, delta: ChatDelta, reply_subject: str) -> None:
        await self._nc.publish(self._reply(reply_subject), delta.model_dump_json().encode())

    @asynccontextmanager
    async def caller_gone(self, request_id: str) -> AsyncIterator[threading.Event]:
        subject = (
            subjects.chat_cancel(request_id)
            if self._node_id is None
            else subjects.node_cancel(self._node_id, request_id)
        )
        async with self._cancels.flag(subject) as gone:
            yield gone
