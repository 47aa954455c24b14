"""The chat use case's port to the message bus, its NATS adapter and an in-memory fake.

What a chat needs from the bus: store an event durably (`ChatRequested`, `ChatFailed`,
`ChatDelivered`), wait for the replies of a request (its outcome, its streamed pieces, which
node runs it), tell the worker to stop (`subjects.chat_cancel`), and forget the request.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_gateway.adapters.replies import ExpectedReplies, ReplyEvent, ReplyWaiter
from koprogo_gateway.domain.errors import (
    BusFullError,
    BusUnavailableError,
    GatewayError,
    RequestTooLargeError,
)
from koprogo_shared import subjects
from koprogo_shared.events import ChatRequested, Event
from koprogo_shared.publishing import PUBLISH_RETRY_S, StreamFullError, publish_event, publish_reply

log = logging.getLogger(__name__)
E = TypeVar("E", bound=Event)


class ChatBus(abc.ABC):
    """The bus as the chat use case sees it; replies come to `reply_subject`."""

    reply_subject: str

    @abc.abstractmethod
    async def publish(self, subject: str, event: Event) -> None:
        """Store `event` durably; RequestTooLargeError (413), BusFullError or BusUnavailableError (503) if not."""

    @abc.abstractmethod
    def expect(self, request_id: str, *, streamed: bool = False) -> ExpectedReplies:
        """Start collecting the replies of `request_id` (call before publishing the request)."""

    @abc.abstractmethod
    async def cancel(self, request_id: str) -> None:
        """Tell whoever generates `request_id` that nobody reads it any more (best effort, never raises)."""

    @abc.abstractmethod
    def forget(self, request_id: str) -> None:
        """Stop collecting the replies of `request_id`; later ones are dropped."""


class NatsChatBus(ChatBus):
    """JetStream for the durable events, core NATS for the replies and the cancel."""

    def __init__(self, nc: NATS, js: JetStreamContext, reply_subject: str) -> None:
        self.nc = nc
        self.js = js
        self.reply_subject = reply_subject
        self.replies = ReplyWaiter()

    async def start(self) -> None:
        await self.replies.start(self.nc, self.reply_subject)

    async def publish(self, subject: str, event: Event) -> None:
        try:
            await publish_event(self.js, subject, event)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise publish_refused(exc) from exc

    def expect(self, request_id: str, *, streamed: bool = False) -> ExpectedReplies:
        return self.replies.expect(request_id, streamed=streamed)

    async def cancel(self, request_id: str) -> None:
        # To the node running it when it holds a key (it alone hears it); else to the cloud
        # worker, or a node on a NATS server without keys, on the request's own subject.
        node = self.replies.sender_of(request_id)
        subject = subjects.chat_cancel(request_id) if node is None else subjects.node_cancel(node, request_id)
        try:
            # In the chat's trace (a PRODUCER span, its context in the headers), as every other publish.
            await publish_reply(self.nc, subject, b"")
        except (nats.errors.Error, OSError) as exc:
            log.warning("could not cancel %s: %r", request_id, exc)

    def forget(self, request_id: str) -> None:
        self.replies.forget(request_id)


def publish_refused(exc: nats.errors.Error | TimeoutError | OSError) -> GatewayError:
    """What the caller is told when `publish_event` raised `exc`."""
    if isinstance(exc, nats.errors.MaxPayloadError):
        return RequestTooLargeError("the request is larger than the message bus accepts")
    if isinstance(exc, StreamFullError):
        return BusFullError(
            f"the event log is full ({exc.stream}): the request was not accepted and nothing "
            "stored was dropped; retry later (an operator must make room)"
        )
    if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError is one
        # No answer for PUBLISH_RETRY_S. A stream whose disk filled answers no publish until
        # nats-server restarts (tests/integration/test_jetstream_disk_full.py): from here it looks
        # like an unreachable server or a stream without a leader.
        return BusUnavailableError(
            f"the message bus did not confirm the request within {PUBLISH_RETRY_S:g} s (NATS "
            "unreachable, or a stream that cannot store it: no leader, or a full disk); retry later"
        )
    return BusUnavailableError(f"the message bus did not accept the request: {type(exc).__name__}")


# What the fake answers a published request with: replies, and pauses (seconds) between them.
Script = Callable[[ChatRequested], Sequence[ReplyEvent | float]]


class FakeChatBus(ChatBus):
    """In memory: records what is published and cancelled; `script` says how each request is answered.

    Each published `ChatRequested` gets the replies `script(request)` returns, in order, from
    a task of its own (a float there is a pause, in seconds); an empty script is silence.
    `refuse_with` makes every publish raise that error, as an unreachable bus does.
    """

    def __init__(self, script: Script | None = None, reply_subject: str = "koprogo.reply.fake") -> None:
        self.reply_subject = reply_subject
        self.script: Script = script or (lambda _: ())
        self.published: list[tuple[str, Event]] = []
        self.cancelled: list[str] = []
        self.refuse_with: Exception | None = None
        self.replies = ReplyWaiter()
        self._answering: set[asyncio.Task[None]] = set()

    async def publish(self, subject: str, event: Event) -> None:
        await asyncio.sleep(0)
        if self.refuse_with is not None:
            raise self.refuse_with
        self.published.append((subject, event))
        if isinstance(event, ChatRequested):
            task = asyncio.create_task(self._answer(self.script(event)))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _answer(self, replies: Sequence[ReplyEvent | float]) -> None:
        for reply in replies:
            if isinstance(reply, float | int):
                await asyncio.sleep(reply)
            else:
                await asyncio.sleep(0)
                self.replies.deliver(reply)

    def expect(self, request_id: str, *, streamed: bool = False) -> ExpectedReplies:
        return self.replies.expect(request_id, streamed=streamed)

    async def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)

    def forget(self, request_id: str) -> None:
        self.replies.forget(request_id)

    def events(self, kind: type[E]) -> list[E]:
        """The published events of one type, in order."""
        return [event for _, event in self.published if isinstance(event, kind)]
