"""Answers addressed to this gateway arrive on its own reply subject and wake the waiting request.

`ReplyWaiter` sorts the replies (`InferenceStarted`, `ChatDelta`, `ChatCompleted`,
`ChatFailed`) to the request they answer; the NATS subscription only parses them. The fake
chat bus hands it scripted replies the same way (`adapters/chat_bus.py`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

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

ReplyEvent = ChatCompleted | ChatFailed | InferenceStarted | ChatDelta


@dataclass
class ExpectedReplies:
    """What one request waits for: its outcome, its streamed pieces in order, the node running it."""

    outcome: asyncio.Future[ChatCompleted | ChatFailed]
    # Streamed requests only (the node sends the pieces in order); stays empty otherwise.
    pieces: asyncio.Queue[ChatDelta] = field(default_factory=asyncio.Queue)
    streamed: bool = False
    # The node that said it is generating this request's answer, if any.
    node_id: str | None = None


class ReplyWaiter:
    def __init__(self) -> None:
        self._expected: dict[str, ExpectedReplies] = {}
        self._sub: Subscription | None = None

    async def start(self, nc: NATS, subject: str) -> None:
        self._sub = await nc.subscribe(subject, cb=self._on_reply)

    def expect(self, request_id: str, *, streamed: bool = False) -> ExpectedReplies:
        expected = ExpectedReplies(asyncio.get_running_loop().create_future(), streamed=streamed)
        self._expected[request_id] = expected
        return expected

    def forget(self, request_id: str) -> None:
        self._expected.pop(request_id, None)

    @property
    def pending(self) -> int:
        return len(self._expected)

    def deliver(self, reply: ReplyEvent) -> None:
        """Hand `reply` to the request it answers; nobody waiting (timed out, a duplicate): dropped."""
        expected = self._expected.get(reply.request_id)
        # A reply for a request that already timed out (or a redelivered duplicate) has
        # nobody waiting; the durable copy of an outcome is in KOPROGO_EVENTS for the ledger.
        if expected is None:
            return
        if isinstance(reply, InferenceStarted):
            expected.node_id = reply.node_id
        elif isinstance(reply, ChatDelta):
            if expected.streamed:
                expected.pieces.put_nowait(reply)
        elif not expected.outcome.done():
            expected.outcome.set_result(reply)

    async def _on_reply(self, msg: Msg) -> None:
        try:
            reply = reply_message_adapter.validate_json(msg.data)
        except ValidationError as exc:
            log.error("malformed reply on %s: %d errors", msg.subject, exc.error_count())
            return
        self.deliver(reply)
