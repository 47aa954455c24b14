"""Answers addressed to this gateway arrive on its own reply subject and wake the waiting request."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from koprogo_shared.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    InferenceStarted,
    reply_message_adapter,
)

log = logging.getLogger(__name__)


class ReplyWaiter:
    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[ChatCompleted | ChatFailed]] = {}
        self._running_on: dict[str, str] = {}
        # Streamed requests: their pieces, in arrival order (the node sends them in order).
        self._pieces: dict[str, asyncio.Queue[ChatDelta]] = {}
        self._sub: Subscription | None = None

    async def start(self, nc: NATS, subject: str) -> None:
        self._sub = await nc.subscribe(subject, cb=self._on_reply)

    def expect(self, request_id: str) -> asyncio.Future[ChatCompleted | ChatFailed]:
        future: asyncio.Future[ChatCompleted | ChatFailed] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def pieces(self, request_id: str) -> asyncio.Queue[ChatDelta]:
        """The queue a streamed request's ChatDelta messages go to (call after `expect`)."""
        return self._pieces.setdefault(request_id, asyncio.Queue())

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)
        self._running_on.pop(request_id, None)
        self._pieces.pop(request_id, None)

    def running_on(self, request_id: str) -> str | None:
        """The node that said it is generating this request's answer, if any."""
        return self._running_on.get(request_id)

    @property
    def pending(self) -> int:
        return len(self._waiting)

    async def _on_reply(self, msg: Msg) -> None:
        try:
            outcome = reply_message_adapter.validate_json(msg.data)
        except ValidationError as exc:
            log.error("malformed reply on %s: %d errors", msg.subject, exc.error_count())
            return
        if isinstance(outcome, InferenceStarted):
            if outcome.request_id in self._waiting:
                self._running_on[outcome.request_id] = outcome.node_id
            return
        if isinstance(outcome, ChatDelta):
            queue = self._pieces.get(outcome.request_id)
            if queue is not None:
                queue.put_nowait(outcome)
            return
        future = self._waiting.pop(outcome.request_id, None)
        # A reply for a request that already timed out (or a redelivered duplicate) has
        # nobody waiting; the durable copy of it is in KOPROGO_EVENTS for the ledger.
        if future is not None and not future.done():
            future.set_result(outcome)
