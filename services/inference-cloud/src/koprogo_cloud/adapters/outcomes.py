"""Where the cloud worker's results go: the durable event log first, then the waiting gateway."""

from __future__ import annotations

from abc import ABC, abstractmethod

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatFailed, InferenceAttemptFailed
from koprogo_shared.nats_connection import publish_event


class OutcomeSink(ABC):
    """Delivers the outcome of a RunInference."""

    @abstractmethod
    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None: ...

    @abstractmethod
    async def attempt_failed(self, failed: InferenceAttemptFailed) -> None:
        """Tell the router this target failed (it falls back or fails the request)."""


class NatsOutcomeSink(OutcomeSink):
    """JetStream (KOPROGO_EVENTS) then core NATS to `reply_subject`, as the edge node does.

    The durable copy goes first: if it cannot be stored the publish raises and the work
    item is retried, so the gateway never receives an answer the ledger never sees.
    """

    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js

    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None:
        if isinstance(outcome, ChatCompleted):
            subject = subjects.chat_completed(outcome.copro_id)
        else:
            subject = subjects.chat_failed(outcome.copro_id)
        await publish_event(self._js, subject, outcome)
        await self._nc.publish(reply_subject, outcome.model_dump_json().encode())

    async def attempt_failed(self, failed: InferenceAttemptFailed) -> None:
        await publish_event(self._js, subjects.inference_attempt_failed(failed.copro_id), failed)
