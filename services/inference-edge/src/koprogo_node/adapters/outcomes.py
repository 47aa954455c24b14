"""Where a node's answers go: the durable event log first, then the waiting gateway.

Streamed answers also go out piece by piece (core NATS, not stored), and the node listens
for the caller leaving (`subjects.chat_cancel`), so it stops generating for nobody.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatDelta, ChatFailed, InferenceStarted
from koprogo_shared.nats_connection import deliver_chat_outcome


class OutcomeSink(ABC):
    """Delivers the outcome of a RunInference."""

    @abstractmethod
    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None: ...

    @abstractmethod
    async def started(self, started: InferenceStarted, reply_subject: str) -> None:
        """Tell the waiting gateway which node is generating (not stored: core NATS only)."""

    async def delta(self, delta: ChatDelta, reply_subject: str) -> None:  # noqa: B027 (optional)
        """Send the next piece of a streamed answer (not stored: core NATS only)."""

    @asynccontextmanager
    async def caller_gone(self, request_id: str) -> AsyncIterator[threading.Event]:
        """A flag set when the caller of this streamed request leaves, while the block runs."""
        yield threading.Event()


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

    async def delta(self, delta: ChatDelta, reply_subject: str) -> None:
        await self._nc.publish(reply_subject, delta.model_dump_json().encode())

    @asynccontextmanager
    async def caller_gone(self, request_id: str) -> AsyncIterator[threading.Event]:
        gone = threading.Event()

        async def on_cancel(_: Msg) -> None:
            gone.set()

        sub = await self._nc.subscribe(subjects.chat_cancel(request_id), cb=on_cancel)
        try:
            yield gone
        finally:
            await sub.unsubscribe()
