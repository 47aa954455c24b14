"""Where the cloud worker's results go: the durable event log first, then the waiting gateway."""

from __future__ import annotations

from abc import ABC, abstractmethod

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatFailed, InferenceAttemptFailed
from koprogo_shared.nats_connection import deliver_chat_outcome, publish_event


class OutcomeSink(ABC):
    """Delivers the outcome of a RunInference."""

    @abstractmethod
    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None: ...

    @abstractmethod
    async def attempt_failed(self, failed: InferenceAttemptFailed) -> None:
        """Tell the router this target failed (it falls back or fails the request)."""


class NatsOutcomeSink(OutcomeSink):
    """JetStream (KOPROGO_EVENTS) then core NATS to `reply_subject`, as the edge node does.

    (`deliver_chat_outcome`: the durable copy goes first.)
    """

    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js

    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None:
        await deliver_chat_outcome(self._nc, self._js, outcome, reply_subject)

    async def attempt_failed(self, failed: InferenceAttemptFailed) -> None:
        await publish_event(self._js, subjects.inference_attempt_failed(failed.copro_id), failed)
