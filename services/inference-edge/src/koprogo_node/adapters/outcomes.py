"""Where a node's answers go: the durable event log first, then the waiting gateway."""

from __future__ import annotations

from abc import ABC, abstractmethod

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_shared.events import ChatCompleted, ChatFailed, InferenceStarted
from koprogo_shared.nats_connection import deliver_chat_outcome


class OutcomeSink(ABC):
    """Delivers the outcome of a RunInference."""

    @abstractmethod
    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None: ...

    @abstractmethod
    async def started(self, started: InferenceStarted, reply_subject: str) -> None:
        """Tell the waiting gateway which node is generating (not stored: core NATS only)."""


class NatsOutcomeSink(OutcomeSink):
    """JetStream (KOPROGO_EVENTS, for the ledger) then core NATS to `reply_subject` (the gateway).

    (`deliver_chat_outcome`: the durable copy goes first.)
    """

    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js

    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None:
        await deliver_chat_outcome(self._nc, self._js, outcome, reply_subject)

    async def started(self, started: InferenceStarted, reply_subject: str) -> None:
        await self._nc.publish(reply_subject, started.model_dump_json().encode())
