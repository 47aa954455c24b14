"""Where the cloud worker's results go: the durable event log first, then the waiting gateway.

Streamed answers also go out piece by piece (core NATS, not stored), and the worker listens
for the caller leaving (`subjects.chat_cancel`), so it stops a provider call nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatDelta, ChatFailed, InferenceAttemptFailed
from koprogo_shared.nats_connection import deliver_chat_outcome, publish_event


class OutcomeSink(ABC):
    """Delivers the outcome of a RunInference."""

    @abstractmethod
    async def publish(self, outcome: ChatCompleted | ChatFailed, reply_subject: str) -> None: ...

    @abstractmethod
    async def attempt_failed(self, failed: InferenceAttemptFailed) -> None:
        """Tell the router this target failed (it falls back or fails the request)."""

    async def delta(self, delta: ChatDelta, reply_subject: str) -> None:  # noqa: B027 (optional)
        """Send the next piece of a streamed answer (not stored: core NATS only)."""

    @asynccontextmanager
    async def caller_gone(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set when the caller of this request leaves, while the block runs."""
        yield asyncio.Event()


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

    async def delta(self, delta: ChatDelta, reply_subject: str) -> None:
        await self._nc.publish(reply_subject, delta.model_dump_json().encode())

    @asynccontextmanager
    async def caller_gone(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        gone = asyncio.Event()

        async def on_cancel(_: Msg) -> None:
            gone.set()

        sub = await self._nc.subscribe(subjects.chat_cancel(request_id), cb=on_cancel)
        try:
            yield gone
        finally:
            # A failed unsubscribe must not turn a finished call into a retried one.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
